//! `messaging.destination.partition.id` values without an allocation for the usual partitions.

use opentelemetry::StringValue;

const SMALL: [&str; 64] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
    "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46", "47", "48",
    "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61", "62", "63",
];

/// The partition id as an attribute value: a static string for partitions 0 to 63.
pub(crate) fn partition_id(partition: i32) -> StringValue {
    match usize::try_from(partition).ok().and_then(|i| SMALL.get(i)) {
        Some(s) => StringValue::from(*s),
        None => StringValue::from(partition.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::partition_id;

    #[test]
    fn small_and_large_partitions() {
        for p in [0, 1, 9, 10, 63, 64, 1000, -1] {
            assert_eq!(partition_id(p).as_str(), p.to_string());
        }
    }
}
