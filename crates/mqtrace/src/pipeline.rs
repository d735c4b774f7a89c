//! Pipeline latency: the origin time of a pipeline's first message and the hop count, carried
//! from a process span's context to the messages sent inside it (the [`crate::PIPELINE_HEADER`]).

use crate::carrier::{HeaderExtractor, Injector};
use crate::metrics::{from_unix_ms, unix_ms};
use std::time::SystemTime;

/// Where a message stands in its pipeline; a value of the process span's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pipeline {
    /// When the pipeline's first message was sent.
    pub(crate) origin: SystemTime,
    /// Hops since then (1 at the first consumer).
    pub(crate) stage: u32,
}

impl Pipeline {
    /// Reads the header written by the sending stage: its origin and its own stage.
    pub(crate) fn read(headers: &dyn HeaderExtractor) -> Option<Self> {
        let Some(Ok(v)) = headers.header(crate::PIPELINE_HEADER) else {
            return None;
        };
        let (origin, stage) = v.split_once(';')?;
        Some(Self {
            origin: from_unix_ms(origin.trim().parse().ok()?),
            stage: stage.trim().parse().ok()?,
        })
    }

    /// Writes the header for a message sent in this stage.
    pub(crate) fn write(&self, headers: &mut dyn Injector) {
        headers.set(
            crate::PIPELINE_HEADER,
            format!("{};{}", unix_ms(self.origin), self.stage),
        );
    }

    /// Where a delivery stands: after the sender's stage (`sent`, from its trusted header),
    /// one hop further, unless the message is mqtrace's own retry copy (the same hop again);
    /// without a trusted header the pipeline starts at this message (`sent_at`, or now).
    pub(crate) fn after(
        sent: Option<Self>,
        retried: bool,
        sent_at: Option<SystemTime>,
        now: SystemTime,
    ) -> Self {
        match sent {
            Some(p) => Self {
                origin: p.origin,
                stage: if retried {
                    p.stage.max(1)
                } else {
                    p.stage.saturating_add(1)
                },
            },
            None => Self {
                origin: sent_at.unwrap_or(now),
                stage: 1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn header_round_trips_and_bad_values_are_ignored() {
        let p = Pipeline {
            origin: from_unix_ms(1_700_000_000_123),
            stage: 2,
        };
        let mut h: HashMap<String, String> = HashMap::new();
        p.write(&mut h);
        assert_eq!(h[crate::PIPELINE_HEADER], "1700000000123;2");
        assert_eq!(Pipeline::read(&h), Some(p));
        for bad in ["", "x;1", "1;x", "12", ";"] {
            h.insert(crate::PIPELINE_HEADER.into(), bad.into());
            assert_eq!(Pipeline::read(&h), None, "{bad:?}");
        }
    }

    #[test]
    fn each_hop_adds_one_retries_do_not_and_no_header_starts_a_pipeline() {
        let origin = from_unix_ms(1_000);
        let now = from_unix_ms(5_000);
        let sent = Some(Pipeline { origin, stage: 2 });
        assert_eq!(Pipeline::after(sent, false, None, now).stage, 3);
        assert_eq!(Pipeline::after(sent, true, None, now).stage, 2);
        assert_eq!(Pipeline::after(sent, false, None, now).origin, origin);
        let fresh = Pipeline::after(None, false, Some(from_unix_ms(4_000)), now);
        assert_eq!((fresh.origin, fresh.stage), (from_unix_ms(4_000), 1));
        assert_eq!(Pipeline::after(None, false, None, now).origin, now);
    }
}
