//! What the spans of one client record about it, read from its `ClientConfig`.

use mqtrace::attributes as attr;
use mqtrace::{Config, MessagingSystem, instrument::Instrumentation};
use opentelemetry::{KeyValue, StringValue};
use rdkafka::ClientConfig;
use std::sync::Arc;

/// What a traced client records about itself, read from its `ClientConfig`:
/// the first bootstrap server (`server.address`, `server.port`), `client.id`
/// (`messaging.client.id`: the one you set, else an id unique to this client instance,
/// `rdkafka-{process}-{n}`, since librdkafka's default `rdkafka` names every client alike), `group.id`
/// (`messaging.consumer.group.name`) and the commit settings that decide what a message
/// dropped without being settled means.
///
/// ```
/// use rdkafka::ClientConfig;
/// let mut c = ClientConfig::new();
/// c.set("bootstrap.servers", "kafka-1:9093,kafka-2:9093").set("group.id", "billing");
/// let info = mqtrace_rdkafka::ClientInfo::read(&c);
/// assert_eq!(info.server(), Some(("kafka-1", 9093)));
/// assert!(info.client_id().starts_with("rdkafka-")); // no client.id set: one made for it
/// assert_eq!(info.group_id(), Some("billing"));
/// assert!(info.auto_commit() && info.auto_offset_store());
/// ```
#[derive(Clone, Debug)]
pub struct ClientInfo {
    server: Option<(String, u16)>,
    client_id: StringValue,
    group_id: Option<StringValue>,
    auto_commit: bool,
    auto_offset_store: bool,
}

fn flag(config: &ClientConfig, key: &str, default: bool) -> bool {
    match config.get(key).map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
        _ => default,
    }
}

/// `host:port` of the first entry of a bootstrap list (a `scheme://` prefix and IPv6
/// brackets removed; port 9092 when none is given).
fn first_server(list: &str) -> Option<(String, u16)> {
    let first = list.split(',').map(str::trim).find(|s| !s.is_empty())?;
    let first = first.split_once("://").map_or(first, |(_, rest)| rest);
    if let Some(rest) = first.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = tail
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(9092);
        return Some((host.to_owned(), port));
    }
    match first.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Some((host.to_owned(), port.parse().unwrap_or(9092)))
        }
        _ => Some((first.to_owned(), 9092)),
    }
}

impl ClientInfo {
    /// Reads what the spans record from a client configuration.
    ///
    /// ```
    /// let info = mqtrace_rdkafka::ClientInfo::read(&rdkafka::ClientConfig::new());
    /// assert_eq!(info.server(), None);
    /// ```
    pub fn read(config: &ClientConfig) -> Self {
        let servers = config
            .get("bootstrap.servers")
            .or_else(|| config.get("metadata.broker.list"));
        Self {
            server: servers.and_then(first_server),
            client_id: StringValue::from(Arc::<str>::from(match config.get("client.id") {
                Some(id) if !id.is_empty() && id != "rdkafka" => id.to_owned(),
                _ => mqtrace::instrument::unique_client_id("rdkafka"),
            })),
            group_id: config
                .get("group.id")
                .map(|g| StringValue::from(Arc::<str>::from(g))),
            auto_commit: flag(config, "enable.auto.commit", true),
            auto_offset_store: flag(config, "enable.auto.offset.store", true),
        }
    }

    /// The first bootstrap server.
    ///
    /// ```
    /// let mut c = rdkafka::ClientConfig::new();
    /// c.set("bootstrap.servers", "[::1]:9092");
    /// assert_eq!(mqtrace_rdkafka::ClientInfo::read(&c).server(), Some(("::1", 9092)));
    /// ```
    pub fn server(&self) -> Option<(&str, u16)> {
        self.server.as_ref().map(|(h, p)| (h.as_str(), *p))
    }

    /// `messaging.client.id`.
    ///
    /// ```
    /// let mut c = rdkafka::ClientConfig::new();
    /// c.set("client.id", "billing-1");
    /// assert_eq!(mqtrace_rdkafka::ClientInfo::read(&c).client_id(), "billing-1");
    /// ```
    pub fn client_id(&self) -> &str {
        self.client_id.as_str()
    }

    /// `messaging.consumer.group.name`.
    ///
    /// ```
    /// assert_eq!(mqtrace_rdkafka::ClientInfo::read(&rdkafka::ClientConfig::new()).group_id(), None);
    /// ```
    pub fn group_id(&self) -> Option<&str> {
        self.group_id.as_ref().map(StringValue::as_str)
    }

    /// `enable.auto.commit` (librdkafka's default: on).
    ///
    /// ```
    /// let mut c = rdkafka::ClientConfig::new();
    /// c.set("enable.auto.commit", "false");
    /// assert!(!mqtrace_rdkafka::ClientInfo::read(&c).auto_commit());
    /// ```
    pub fn auto_commit(&self) -> bool {
        self.auto_commit
    }

    /// `enable.auto.offset.store` (librdkafka's default: on).
    ///
    /// ```
    /// assert!(mqtrace_rdkafka::ClientInfo::read(&rdkafka::ClientConfig::new()).auto_offset_store());
    /// ```
    pub fn auto_offset_store(&self) -> bool {
        self.auto_offset_store
    }

    /// `messaging.consumer.group.name` as an attribute, for consumers.
    pub(crate) fn group_kv(&self) -> Option<KeyValue> {
        self.group_id
            .as_ref()
            .map(|g| KeyValue::new(attr::MESSAGING_CONSUMER_GROUP_NAME, g.clone()))
    }
}

/// Builds the Kafka [`Instrumentation`] for a client configured with `client`: its first
/// bootstrap server is recorded as `server.address` / `server.port`, its `client.id` (or a
/// unique one, see [`ClientInfo`]) as `messaging.client.id`.
///
/// ```
/// let mut c = rdkafka::ClientConfig::new();
/// c.set("bootstrap.servers", "127.0.0.1:9092");
/// let inst = mqtrace_rdkafka::instrumentation(mqtrace::Config::new(), &c);
/// assert_eq!(inst.system(), mqtrace::MessagingSystem::Kafka);
/// ```
pub fn instrumentation(config: Config, client: &ClientConfig) -> Instrumentation {
    build(config, &ClientInfo::read(client))
}

pub(crate) fn build(config: Config, info: &ClientInfo) -> Instrumentation {
    let mut b = Instrumentation::builder(MessagingSystem::Kafka, "mqtrace-rdkafka")
        .version(env!("CARGO_PKG_VERSION"));
    if let Some((host, port)) = info.server() {
        b = b.server(host, port);
    }
    b.attribute(KeyValue::new(
        attr::MESSAGING_CLIENT_ID,
        info.client_id.clone(),
    ))
    .build(config)
}

/// Records `messaging.kafka.cluster.id` on `inst`'s spans once the client knows it (from
/// the cluster's first metadata answer; asked without waiting).
pub(crate) fn learn_cluster<C: rdkafka::ClientContext>(
    inst: &Instrumentation,
    client: &rdkafka::client::Client<C>,
) {
    inst.learn(|| {
        client
            .fetch_cluster_id(std::time::Duration::ZERO)
            .filter(|id| !id.is_empty())
            .map(|id| vec![KeyValue::new(attr::MESSAGING_KAFKA_CLUSTER_ID, id)])
    });
}

#[cfg(test)]
mod tests {
    use super::first_server;

    #[test]
    fn bootstrap_lists() {
        let s = |l: &str| first_server(l);
        assert_eq!(s("a:1,b:2"), Some(("a".into(), 1)));
        assert_eq!(s(" PLAINTEXT://k:9093 "), Some(("k".into(), 9093)));
        assert_eq!(s("kafka"), Some(("kafka".into(), 9092)));
        assert_eq!(s("[fe80::1]"), Some(("fe80::1".into(), 9092)));
        assert_eq!(s(""), None);
    }
}
