//! The order rules of the pipeline: what a valid order is, the demo's simulated failure, and
//! what the enricher adds.
//!
//! An order is JSON:
//! `{"id": "o-1", "customer": "c-7", "items": [{"sku": "book-42", "qty": 1}]}`.
//! With `"simulate": "transient_failure"` the validator fails its first two attempts (as if a
//! service it calls were down) and succeeds on the third.

use serde_json::{Value, json};

/// The value of `simulate` that makes the validator fail twice before it succeeds.
pub const TRANSIENT_FAILURE: &str = "transient_failure";

/// The order's id, when it has one.
///
/// ```
/// let o = serde_json::json!({"id": "o-1"});
/// assert_eq!(mqtrace_examples::order::id(&o), Some("o-1"));
/// ```
pub fn id(order: &Value) -> Option<&str> {
    order
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Checks an order: an id, a customer, and at least one item with a SKU and a positive
/// quantity. The error says what is wrong.
///
/// ```
/// use serde_json::json;
/// use mqtrace_examples::order::validate;
/// assert!(validate(&json!({"id": "o-1", "customer": "c", "items": [{"sku": "a", "qty": 1}]})).is_ok());
/// assert_eq!(validate(&json!({"id": "o-1", "customer": "c", "items": []})).expect_err("invalid"), "order has no items");
/// ```
pub fn validate(order: &Value) -> Result<(), String> {
    if id(order).is_none() {
        return Err("order has no id".into());
    }
    if order.get("customer").and_then(Value::as_str).is_none() {
        return Err("order has no customer".into());
    }
    let items = order
        .get("items")
        .and_then(Value::as_array)
        .ok_or("order has no items")?;
    if items.is_empty() {
        return Err("order has no items".into());
    }
    for (i, item) in items.iter().enumerate() {
        if item.get("sku").and_then(Value::as_str).is_none() {
            return Err(format!("item {i} has no sku"));
        }
        match item.get("qty").and_then(Value::as_i64) {
            Some(q) if q > 0 => {}
            _ => return Err(format!("item {i} has no positive qty")),
        }
    }
    Ok(())
}

/// Whether the order asks the validator to fail transiently on its first two attempts.
///
/// ```
/// assert!(mqtrace_examples::order::fails_transiently(&serde_json::json!({"simulate": "transient_failure"})));
/// ```
pub fn fails_transiently(order: &Value) -> bool {
    order.get("simulate").and_then(Value::as_str) == Some(TRANSIENT_FAILURE)
}

/// The order with what the enricher adds: the number of units and a shipping priority.
///
/// ```
/// let o = serde_json::json!({"id": "o-1", "items": [{"sku": "a", "qty": 7}]});
/// let e = mqtrace_examples::order::enrich(&o);
/// assert_eq!(e["units"], 7);
/// assert_eq!(e["priority"], "bulk");
/// ```
pub fn enrich(order: &Value) -> Value {
    let units: i64 = order
        .get("items")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("qty").and_then(Value::as_i64))
                .sum()
        })
        .unwrap_or(0);
    let mut out = order.clone();
    if let Some(map) = out.as_object_mut() {
        map.insert("units".into(), json!(units));
        map.insert(
            "priority".into(),
            json!(if units > 5 { "bulk" } else { "standard" }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_orders_say_why() {
        assert_eq!(
            validate(&json!({})).expect_err("invalid"),
            "order has no id"
        );
        assert_eq!(
            validate(&json!({"id": "o", "customer": "c", "items": [{"sku": "a", "qty": 0}]}))
                .expect_err("invalid"),
            "item 0 has no positive qty"
        );
        assert_eq!(
            validate(&json!({"id": "o", "customer": "c"})).expect_err("invalid"),
            "order has no items"
        );
    }
}
