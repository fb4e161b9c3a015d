//! Where a lead lives in `LEADS`: its subject `leads.in.{sender}.{partition}`, the partition's
//! consumer, and the hash that picks the partition. This module owns that subject format; every
//! writer and reader of `leads.in.*` goes through it.
//!
//! Why partitions: per-lead order across several routers needs one writer per lead at a time.
//! JetStream has no per-key consumer groups, so the stream is cut into `handlers.partitions`
//! slices by a stable hash of the lead's group key, and each slice has one durable consumer whose
//! priority group pins it to exactly one router (see `pipeline::ownership`).
//!
//! The hash is FNV-1a 32 over the group key's bytes, modulo the partition count: the same
//! function as nats-server's `partition(n, token)` subject transform, so the server (or a script)
//! computes the same partition from a subject that carries the group key.

/// The un-partitioned form, `leads.in.{sender}`: what older replays and hand publishes use. The
/// `router` consumer takes these and re-publishes them to their partition.
pub const LEGACY_FILTER: &str = "leads.in.*";
/// The priority group of every partition consumer (at most 16 characters).
pub const PRIORITY_GROUP: &str = "leads";

/// FNV-1a 32-bit, as nats-server's `getHashPartition`.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The partition of a group key.
pub fn partition_of(group: &str, partitions: u16) -> u16 {
    (fnv1a32(group.as_bytes()) % u32::from(partitions.max(1))) as u16
}

/// `leads.in.{sender}.{partition}`.
pub fn lead_subject(sender: &str, partition: u16) -> String {
    format!("{}{sender}.{partition}", super::SUBJECT_IN_PREFIX)
}

/// `leads.in.{sender}`: the legacy subject, re-partitioned by the `router` consumer.
pub fn legacy_subject(sender: &str) -> String {
    format!("{}{sender}", super::SUBJECT_IN_PREFIX)
}

/// `leads.edge.{edge}.{sender}`: where an edge stores a lead. The hub's `LEADS` sources it as
/// the legacy `leads.in.{sender}` (a subject transform), and the `router` consumer gives it its
/// partition there: the partition comes from the lead and the hub's group key, never the edge.
/// A prefix of its own, not `leads.in.`, so that across the leaf link neither side's stream
/// takes the other's publishes (a stream's subjects are interest that the link carries).
pub fn edge_subject(edge: &str, sender: &str) -> String {
    format!("{EDGE_PREFIX}{edge}.{sender}")
}

/// The subjects of an edge's stream, `leads.edge.{edge}.>`.
pub fn edge_filter(edge: &str) -> String {
    format!("{EDGE_PREFIX}{edge}.>")
}

/// The edge a `leads.edge.{edge}.{sender}` subject came from.
pub fn edge_of(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix(EDGE_PREFIX)?;
    rest.split_once('.')
        .map(|(edge, _)| edge)
        .filter(|e| !e.is_empty())
}

const EDGE_PREFIX: &str = "leads.edge.";

/// What a `leads.in.` subject says: the sender, and the partition unless it is the legacy form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadSubject<'a> {
    pub sender: &'a str,
    pub partition: Option<u16>,
}

pub fn parse_subject(subject: &str) -> Option<LeadSubject<'_>> {
    let rest = subject.strip_prefix(super::SUBJECT_IN_PREFIX)?;
    match rest.split_once('.') {
        None if !rest.is_empty() => Some(LeadSubject {
            sender: rest,
            partition: None,
        }),
        Some((sender, p)) if !sender.is_empty() => Some(LeadSubject {
            sender,
            partition: Some(p.parse().ok()?),
        }),
        _ => None,
    }
}

/// The sender named by a `leads.in.` subject, or `unknown`.
pub fn sender_of(subject: &str) -> &str {
    parse_subject(subject).map_or("unknown", |s| s.sender)
}

/// The durable consumer of one partition: `router-p{N}`.
pub fn consumer_name(partition: u16) -> String {
    format!("{}-p{partition}", super::CONSUMER_ROUTER)
}

/// The partition a consumer name stands for (`router-p3` -> 3).
pub fn partition_of_consumer(name: &str) -> Option<u16> {
    name.strip_prefix(super::CONSUMER_ROUTER)?
        .strip_prefix("-p")?
        .parse()
        .ok()
}

/// The filter of a partition's consumer: every sender, that partition.
pub fn filter_subject(partition: u16) -> String {
    format!("{}*.{partition}", super::SUBJECT_IN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        // Published FNV-1a 32 test vectors.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for n in [1u16, 2, 16, 1024] {
            for g in ["", "abc", "0123456789abcdef"] {
                let p = partition_of(g, n);
                assert!(p < n);
                assert_eq!(p, partition_of(g, n));
            }
        }
        // Spread: 1,600 distinct keys over 16 partitions leave none empty.
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[usize::from(partition_of(&format!("{i:064x}"), 16))] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }

    #[test]
    fn subjects_round_trip() {
        assert_eq!(lead_subject("demo", 7), "leads.in.demo.7");
        assert_eq!(
            parse_subject("leads.in.demo.7"),
            Some(LeadSubject {
                sender: "demo",
                partition: Some(7)
            })
        );
        assert_eq!(
            parse_subject("leads.in.demo"),
            Some(LeadSubject {
                sender: "demo",
                partition: None
            })
        );
        assert_eq!(parse_subject("leads.in.demo.x"), None);
        assert_eq!(parse_subject("leads.dlq.demo"), None);
        assert_eq!(sender_of("leads.in.demo.3"), "demo");
        assert_eq!(sender_of("other"), "unknown");
        assert_eq!(consumer_name(3), "router-p3");
        assert_eq!(partition_of_consumer("router-p3"), Some(3));
        assert_eq!(partition_of_consumer("router"), None);
        assert_eq!(filter_subject(3), "leads.in.*.3");
    }

    #[test]
    fn edge_subjects_name_their_edge_and_stay_out_of_leads_in() {
        let s = edge_subject("eu1", "demo");
        assert_eq!(s, "leads.edge.eu1.demo");
        assert_eq!(edge_of(&s), Some("eu1"));
        assert_eq!(edge_filter("eu1"), "leads.edge.eu1.>");
        assert_eq!(
            parse_subject(&s),
            None,
            "an edge subject is not a LEADS subject"
        );
        assert_eq!(edge_of("leads.in.demo"), None);
        assert_eq!(edge_of("leads.edge."), None);
    }
}
