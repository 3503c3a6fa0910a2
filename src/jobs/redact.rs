//! Secret values replaced by `***` in a byte stream, across read boundaries.
//!
//! A secret may arrive split over two reads, so the redactor holds back the
//! last `longest secret − 1` bytes of each input until the next one (or the
//! end) shows whether they start a secret. Memory: that tail, per stream.

/// What replaces a secret in every stored and streamed output.
pub const MASK: &[u8] = b"***";

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Non-empty secrets, longest first (so an overlapping shorter one
    /// cannot leave half of a longer one behind).
    secrets: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = Vec<u8>>) -> Redactor {
        let mut secrets: Vec<Vec<u8>> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor {
            secrets,
            held: Vec::new(),
        }
    }

    fn hold(&self) -> usize {
        self.secrets.first().map_or(0, |s| s.len() - 1)
    }

    /// Redact `input`; what is certain goes to `out`, a possible secret
    /// prefix at the end is held back.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.secrets.is_empty() {
            out.extend_from_slice(input);
            return;
        }
        self.held.extend_from_slice(input);
        let keep = self.hold();
        let mut i = 0;
        let buf = std::mem::take(&mut self.held);
        while i < buf.len() {
            if let Some(s) = self.secrets.iter().find(|s| buf[i..].starts_with(s)) {
                out.extend_from_slice(MASK);
                i += s.len();
                continue;
            }
            // Near the end a secret may still be cut off: wait for more.
            if buf.len() - i <= keep && self.secrets.iter().any(|s| s.starts_with(&buf[i..])) {
                break;
            }
            out.push(buf[i]);
            i += 1;
        }
        self.held = buf[i..].to_vec();
    }

    /// The stream ended: what was held back is not a secret.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_at_every_split_point() {
        let input = b"user=admin pass=hunter2 again hunter2hunter2 hunter and s3cr3t-longer";
        let want = b"user=admin pass=*** again ****** hunter and ***-longer".to_vec();
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let mut r = Redactor::new([b"hunter2".to_vec(), b"s3cr3t".to_vec(), Vec::new()]);
                let mut out = Vec::new();
                r.feed(&input[..i], &mut out);
                r.feed(&input[i..j], &mut out);
                r.feed(&input[j..], &mut out);
                r.finish(&mut out);
                assert_eq!(out, want, "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn nothing_is_held_without_secrets_or_without_a_prefix() {
        let mut r = Redactor::new([]);
        let mut out = Vec::new();
        r.feed(b"abc", &mut out);
        assert_eq!((out.as_slice(), r.held()), (&b"abc"[..], 0));
        let mut r = Redactor::new([b"xyz".to_vec()]);
        let mut out = Vec::new();
        r.feed(b"abcx", &mut out);
        assert_eq!((out.as_slice(), r.held()), (&b"abc"[..], 1));
        r.feed(b"q", &mut out);
        assert_eq!(out, b"abcxq");
    }

    #[test]
    fn overlapping_secrets_mask_the_longer() {
        let mut r = Redactor::new([b"abc".to_vec(), b"abcdef".to_vec()]);
        let mut out = Vec::new();
        r.feed(b"-abcdef-abc-", &mut out);
        r.finish(&mut out);
        assert_eq!(out, b"-***-***-");
    }
}
