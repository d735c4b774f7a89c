//! The ack id of a subscriber handler.
//!
//! google-cloud-pubsub 1.7 keeps a handler's ack id private (no accessor), yet the conventions
//! record it as `messaging.gcp_pubsub.message.ack_id`. The handler's derived `Debug` output shows
//! it as its first field (`ack_id: "..."`), so it is read from there: the formatting is stopped
//! as soon as the value has been seen, so nothing else is formatted. This runs only for spans
//! that are recording. If a later client version changes the representation the attribute is
//! simply left out (the integration tests check that it is present).

use std::fmt::{self, Write};

const MARKER: &str = "ack_id: \"";

/// Scans formatted text for `ack_id: "…"` and stops the formatting once it has the value.
struct Scan {
    /// How much of the marker has been matched so far (it may span several writes).
    matched: usize,
    value: Option<String>,
    done: bool,
    /// Bytes looked at, to give up on a representation without the marker.
    seen: usize,
}

const LIMIT: usize = 4096;

impl Write for Scan {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            self.seen += c.len_utf8();
            if let Some(v) = self.value.as_mut() {
                match c {
                    '"' => {
                        self.done = true;
                        return Err(fmt::Error);
                    }
                    // An escaped character: not an ack id as the service issues them.
                    '\\' => {
                        self.value = None;
                        return Err(fmt::Error);
                    }
                    c => v.push(c),
                }
                continue;
            }
            if self.seen > LIMIT {
                return Err(fmt::Error);
            }
            let want = MARKER[self.matched..].chars().next();
            if want == Some(c) {
                self.matched += c.len_utf8();
                if self.matched == MARKER.len() {
                    self.value = Some(String::with_capacity(128));
                }
            } else {
                self.matched = usize::from(c == 'a');
            }
        }
        Ok(())
    }
}

/// The `ack_id` field shown by `value`'s `Debug` output, if there is one.
pub(crate) fn from_debug(value: &dyn fmt::Debug) -> Option<String> {
    let mut scan = Scan {
        matched: 0,
        value: None,
        done: false,
        seen: 0,
    };
    // Stopping the formatting early is how the scan ends: the error is expected.
    let _ = write!(scan, "{value:?}");
    if scan.done { scan.value } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)]
    struct Inner {
        ack_id: String,
        other: Vec<u32>,
    }

    #[derive(Debug)]
    #[allow(dead_code)]
    enum Handler {
        AtLeastOnce(Option<Inner>),
    }

    #[test]
    fn reads_the_first_ack_id_field() {
        let h = Handler::AtLeastOnce(Some(Inner {
            ack_id: "projects/p/subscriptions/s:42".into(),
            other: vec![1, 2],
        }));
        assert_eq!(
            from_debug(&h).as_deref(),
            Some("projects/p/subscriptions/s:42")
        );
    }

    #[test]
    fn absent_or_escaped_gives_none() {
        assert_eq!(from_debug(&Handler::AtLeastOnce(None)), None);
        let h = Handler::AtLeastOnce(Some(Inner {
            ack_id: "a\"b".into(),
            other: vec![],
        }));
        assert_eq!(from_debug(&h), None);
        assert_eq!(from_debug(&"aack_id: \"x\""), None); // a string's Debug escapes the quotes
    }
}
