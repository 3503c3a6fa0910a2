//! The server's label selectors and cron expressions (`fleet/selector.rs`,
//! `fleet/cron.rs`), read from API bodies, query strings and the CLI.
//! Both are self-contained files of the server crate, compiled in here as
//! they are.
//!
//! Checked: no text panics either parser; a refused selector names a
//! position inside (or just past) the text; an accepted one prints a
//! canonical text that parses back to the same selector; a label accepted
//! by `parse_label` passes `check_labels`; an accepted cron expression's
//! next occurrence is after the time asked and on a minute.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// `selector.rs` takes the label model from the server's `db::fleet`
/// (whose store code does not compile here): the same two items.
mod db {
    pub mod fleet {
        pub type Labels = std::collections::BTreeMap<String, String>;
        pub const MAX_LABELS: usize = 32;
    }
}

#[allow(dead_code)]
#[path = "../../server/src/fleet/selector.rs"]
mod selector;

#[allow(dead_code)]
#[path = "../../server/src/fleet/cron.rs"]
mod cron;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match selector::Selector::parse(&text) {
        Ok(s) => {
            let canon = s.to_string();
            assert_eq!(
                selector::Selector::parse(&canon).as_ref(),
                Ok(&s),
                "{canon:?}"
            );
            let _ = s.matches(&selector::Labels::new());
        }
        Err(e) => assert!(e.pos <= text.len().max(selector::MAX_SELECTOR), "{e}"),
    }
    if let Ok((k, v)) = selector::parse_label(&text) {
        assert!(selector::check_labels(&[(k, v)].into_iter().collect()).is_ok());
    }
    if let Ok(c) = cron::Cron::parse(&text) {
        let from = 1_795_867_200_000;
        if let Some(n) = c.next_after(from) {
            assert!(n > from && n % 60_000 == 0, "{text:?}");
        }
    }
});
