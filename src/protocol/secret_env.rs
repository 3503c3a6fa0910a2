//! Secrets in a container's `Env` are write-only: every container inspect
//! answer, on the runner before it leaves the host and again on the server
//! before it reaches a client, has their values replaced by [`MASK`].
//!
//! Which entries are secrets: the names a deploy lists in the container's
//! [`SECRETS_LABEL`] (set by the runner at create, names only), plus any
//! names the caller adds (the server adds its app's secret names, which
//! also covers containers made before the label existed). Only the runner
//! creates containers with these labels; a label cannot be changed after
//! create.

use serde_json::Value;

/// Label: comma-separated names of the `Env` entries that are secrets.
pub const SECRETS_LABEL: &str = "tether.secrets";
/// Label: how the deploy delivered the secrets (`files`, `env`, `env_file`).
pub const DELIVERY_LABEL: &str = "tether.secrets_delivery";
/// What a masked value reads.
pub const MASK: &str = "***";

/// The secret names a container's labels list.
pub fn label_names(inspect: &Value) -> Vec<String> {
    inspect["Config"]["Labels"][SECRETS_LABEL]
        .as_str()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Mask the values of `Config.Env` entries named by the container's label
/// or by `extra`, in place. Anything that is not a container inspect
/// answer (no `Config.Env` array) is left as it is. Returns how many
/// entries were masked.
pub fn mask_inspect(inspect: &mut Value, extra: &[String]) -> usize {
    let mut names = label_names(inspect);
    names.extend(extra.iter().cloned());
    if names.is_empty() {
        return 0;
    }
    let Some(env) = inspect
        .get_mut("Config")
        .and_then(|c| c.get_mut("Env"))
        .and_then(Value::as_array_mut)
    else {
        return 0;
    };
    let mut n = 0;
    for entry in env.iter_mut() {
        let Some(text) = entry.as_str() else { continue };
        let name = text.split_once('=').map_or(text, |(k, _)| k);
        if names.iter().any(|s| s == name) {
            *entry = Value::String(format!("{name}={MASK}"));
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labelled_and_extra_names_are_masked_others_kept() {
        let mut v = json!({
            "Id": "abc",
            "Config": {
                "Env": ["PATH=/bin", "DB_PW=hunter2", "API=k=v", "OTHER=x", 7],
                "Labels": {SECRETS_LABEL: "DB_PW, API"},
            }
        });
        assert_eq!(mask_inspect(&mut v, &["OTHER".into()]), 3);
        assert_eq!(
            v["Config"]["Env"],
            json!(["PATH=/bin", "DB_PW=***", "API=***", "OTHER=***", 7])
        );
        let mut plain = json!({"Config": {"Env": ["A=1"], "Labels": null}});
        assert_eq!(mask_inspect(&mut plain, &[]), 0);
        assert_eq!(plain["Config"]["Env"], json!(["A=1"]));
        let mut list = json!([{"Id": "x"}]);
        assert_eq!(mask_inspect(&mut list, &["A".into()]), 0);
    }
}
