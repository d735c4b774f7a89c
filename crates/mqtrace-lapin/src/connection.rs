//! The traced connection: a `lapin::Connection` that hands out traced channels.

use crate::channel::TracedChannel;
use lapin::{Connection, ConnectionProperties, uri::AMQPUri};
use mqtrace::{Config, instrument::Instrumentation};
use std::ops::Deref;

/// Builds the RabbitMQ [`Instrumentation`] for a broker at `host:port` (the values recorded
/// as `server.address` / `server.port`), with a `messaging.client.id` of its own
/// (`lapin-{process}-{n}`: AMQP clients have no id, and lapin does not show the connection
/// name). Build one per connection ([`TracedConnection::connect`] does).
///
/// ```
/// let inst = mqtrace_lapin::instrumentation(mqtrace::Config::new(), Some(("127.0.0.1", 5672)));
/// assert_eq!(inst.system(), mqtrace::MessagingSystem::RabbitMq);
/// ```
pub fn instrumentation(config: Config, server: Option<(&str, u16)>) -> Instrumentation {
    builder(server).build(config)
}

fn builder(server: Option<(&str, u16)>) -> mqtrace::instrument::InstrumentationBuilder {
    let mut b = Instrumentation::builder(mqtrace::MessagingSystem::RabbitMq, "mqtrace-lapin")
        .version(env!("CARGO_PKG_VERSION"))
        .client_id(mqtrace::instrument::unique_client_id("lapin"));
    if let Some((host, port)) = server {
        b = b.server(host, port);
    }
    b
}

/// The broker node's address for `network.peer.*`: the host itself when it is an IP address,
/// else the first address it resolves to (lapin does not show its socket's peer address).
async fn peer(host: &str, port: u16) -> Option<std::net::SocketAddr> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Some(std::net::SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}

/// A `lapin::Connection` whose channels are traced.
///
/// It dereferences to the `Connection`, so every other method is the one you know.
///
/// ```no_run
/// # async fn demo() -> lapin::Result<()> {
/// use lapin::ConnectionProperties;
/// let conn = mqtrace_lapin::TracedConnection::connect(
///     "amqp://guest:guest@127.0.0.1:5672/%2f",
///     ConnectionProperties::default(),
///     mqtrace::Config::new(),
/// ).await?;
/// let channel = conn.create_channel().await?; // a TracedChannel
/// # let _ = channel; Ok(()) }
/// ```
pub struct TracedConnection {
    connection: Connection,
    inst: Instrumentation,
}

impl std::fmt::Debug for TracedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedConnection").finish_non_exhaustive()
    }
}

impl TracedConnection {
    /// Connects like [`Connection::connect`], recording the URI's host and port on spans
    /// (`server.*`), and the broker node's IP address and port (`network.peer.*`).
    ///
    /// ```no_run
    /// # async fn demo() -> lapin::Result<()> {
    /// let conn = mqtrace_lapin::TracedConnection::connect(
    ///     "amqp://127.0.0.1:5672/%2f", Default::default(), mqtrace::Config::new()).await?;
    /// # let _ = conn; Ok(()) }
    /// ```
    pub async fn connect(
        uri: &str,
        properties: ConnectionProperties,
        config: Config,
    ) -> lapin::Result<Self> {
        let connection = Connection::connect(uri, properties).await?;
        let server = uri.parse::<AMQPUri>().ok();
        let server = server
            .as_ref()
            .map(|u| (u.authority.host.as_str(), u.authority.port));
        let mut b = builder(server);
        if let Some((host, port)) = server
            && let Some(addr) = peer(host, port).await
        {
            b = b.peer(addr.ip().to_string(), addr.port());
        }
        Ok(Self {
            connection,
            inst: b.build(config),
        })
    }

    /// Wraps an existing connection.
    ///
    /// ```no_run
    /// # async fn demo(conn: lapin::Connection) {
    /// let inst = mqtrace_lapin::instrumentation(mqtrace::Config::new(), None);
    /// let traced = mqtrace_lapin::TracedConnection::new(conn, inst);
    /// # let _ = traced; }
    /// ```
    pub fn new(connection: Connection, inst: Instrumentation) -> Self {
        Self { connection, inst }
    }

    /// Opens a traced channel, like [`Connection::create_channel`].
    ///
    /// ```no_run
    /// # async fn demo(conn: mqtrace_lapin::TracedConnection) -> lapin::Result<()> {
    /// let channel = conn.create_channel().await?;
    /// # let _ = channel; Ok(()) }
    /// ```
    pub async fn create_channel(&self) -> lapin::Result<TracedChannel> {
        let channel = self.connection.create_channel().await?;
        Ok(TracedChannel::new(channel, self.inst.clone()))
    }

    /// The instrumentation shared by this connection's channels.
    ///
    /// ```no_run
    /// # fn demo(conn: mqtrace_lapin::TracedConnection) {
    /// let _config = conn.instrumentation().config();
    /// # }
    /// ```
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.inst
    }

    /// The wrapped connection.
    ///
    /// ```no_run
    /// # fn demo(conn: mqtrace_lapin::TracedConnection) {
    /// let raw: lapin::Connection = conn.into_inner();
    /// # let _ = raw; }
    /// ```
    pub fn into_inner(self) -> Connection {
        self.connection
    }
}

impl Deref for TracedConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}
