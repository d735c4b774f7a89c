//! Clients for the Pub/Sub emulator (`PUBSUB_EMULATOR_HOST`).
//!
//! google-cloud-pubsub does not read `PUBSUB_EMULATOR_HOST`: every client needs the emulator's
//! endpoint (with `http://`) and anonymous credentials, or its calls hang retrying the metadata
//! server. [`Emulator`] builds the clients that way, and [`Emulator::check`] tells within a
//! bounded time whether the emulator is there.

use google_cloud_auth::credentials::anonymous;
use google_cloud_pubsub::builder::publisher::PublisherBuilder;
use google_cloud_pubsub::builder::subscriber::ClientBuilder as SubscriberBuilder;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use mqtrace::{Config, instrument::Instrumentation};
use std::fmt;
use std::time::Duration;

/// The variable naming the emulator's `host:port`, as Google's tools set it.
const EMULATOR_HOST: &str = "PUBSUB_EMULATOR_HOST";

/// Where the Pub/Sub emulator listens, and builders of clients that talk to it.
///
/// ```
/// let e = mqtrace_pubsub::Emulator::new("127.0.0.1:8085");
/// assert_eq!(e.endpoint(), "http://127.0.0.1:8085");
/// assert_eq!(e.host_port(), ("127.0.0.1", 8085));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emulator {
    host: String,
    port: u16,
    endpoint: String,
}

/// Why the emulator could not be used.
///
/// ```
/// let e = mqtrace_pubsub::Emulator::parse("no-port").unwrap_err();
/// assert!(e.to_string().contains("no-port"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The address is not `host:port`.
    Address(String),
    /// Nothing accepted a connection at the address.
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// Something listens there but did not answer as Pub/Sub within the time limit, or
    /// answered with an error.
    NotPubSub {
        /// The endpoint tried.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for EmulatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(a) => write!(
                f,
                "{EMULATOR_HOST} must be host:port (e.g. 127.0.0.1:8085), got {a:?}"
            ),
            Self::Unreachable { endpoint, reason } => {
                write!(
                    f,
                    "the Pub/Sub emulator at {endpoint} is not reachable: {reason}"
                )
            }
            Self::NotPubSub { endpoint, reason } => write!(
                f,
                "{endpoint} does not answer as the Pub/Sub emulator: {reason}"
            ),
        }
    }
}

impl std::error::Error for EmulatorError {}

impl Emulator {
    /// The emulator at `host:port` (an `http://` prefix is accepted and ignored).
    ///
    /// An address without a valid port gets port 8085; use [`Emulator::parse`] to be told
    /// instead.
    ///
    /// ```
    /// assert_eq!(mqtrace_pubsub::Emulator::new("localhost").endpoint(), "http://localhost:8085");
    /// ```
    pub fn new(address: &str) -> Self {
        Self::parse(address).unwrap_or_else(|_| {
            let host = address.trim_start_matches("http://");
            let host = host.split(':').next().unwrap_or(host);
            Self::from_parts(host, 8085)
        })
    }

    /// Parses `host:port` (an `http://` prefix is accepted).
    ///
    /// ```
    /// let e = mqtrace_pubsub::Emulator::parse("http://[::1]:8681").unwrap();
    /// assert_eq!(e.host_port(), ("::1", 8681));
    /// ```
    pub fn parse(address: &str) -> Result<Self, EmulatorError> {
        let bad = || EmulatorError::Address(address.to_owned());
        let rest = address.trim().trim_start_matches("http://");
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self::from_parts(host, port))
    }

    fn from_parts(host: &str, port: u16) -> Self {
        let endpoint = if host.contains(':') {
            format!("http://[{host}]:{port}")
        } else {
            format!("http://{host}:{port}")
        };
        Self {
            host: host.to_owned(),
            port,
            endpoint,
        }
    }

    /// The emulator named by `PUBSUB_EMULATOR_HOST`, if the variable is set.
    ///
    /// ```
    /// if let Some(e) = mqtrace_pubsub::Emulator::from_env() {
    ///     println!("using the emulator at {}", e.endpoint());
    /// }
    /// ```
    pub fn from_env() -> Option<Self> {
        std::env::var(EMULATOR_HOST)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| Self::new(&v))
    }

    /// The endpoint given to the clients (`http://host:port`).
    ///
    /// ```
    /// assert!(mqtrace_pubsub::Emulator::new("127.0.0.1:8085").endpoint().starts_with("http://"));
    /// ```
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The host and port (recorded as `server.address` / `server.port`).
    ///
    /// ```
    /// assert_eq!(mqtrace_pubsub::Emulator::new("127.0.0.1:8085").host_port().1, 8085);
    /// ```
    pub fn host_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// The Pub/Sub instrumentation for clients of this emulator.
    ///
    /// ```
    /// let inst = mqtrace_pubsub::Emulator::new("127.0.0.1:8085").instrumentation(mqtrace::Config::new());
    /// assert_eq!(inst.system().as_str(), "gcp_pubsub");
    /// ```
    pub fn instrumentation(&self, config: Config) -> Instrumentation {
        crate::instrumentation(config, Some(self.host_port()))
    }

    /// A publisher builder for `topic` (`projects/{project}/topics/{topic}`), set up for the
    /// emulator; set batching options on it as usual.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let e = mqtrace_pubsub::Emulator::new("127.0.0.1:8085");
    /// let publisher = e.publisher("projects/p/topics/t").set_message_count_threshold(10).build().await?;
    /// # let _ = publisher; Ok(()) }
    /// ```
    pub fn publisher(&self, topic: impl Into<String>) -> PublisherBuilder {
        Publisher::builder(topic.into())
            .with_endpoint(self.endpoint.clone())
            .with_credentials(anonymous::Builder::new().build())
    }

    /// A subscriber client builder set up for the emulator.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let subscriber = mqtrace_pubsub::Emulator::new("127.0.0.1:8085").subscriber().build().await?;
    /// # let _ = subscriber; Ok(()) }
    /// ```
    pub fn subscriber(&self) -> SubscriberBuilder {
        Subscriber::builder()
            .with_endpoint(self.endpoint.clone())
            .with_credentials(anonymous::Builder::new().build())
    }

    /// A topic administration client builder set up for the emulator.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let admin = mqtrace_pubsub::Emulator::new("127.0.0.1:8085").topic_admin().build().await?;
    /// admin.create_topic().set_name("projects/p/topics/orders").send().await?;
    /// # Ok(()) }
    /// ```
    pub fn topic_admin(&self) -> google_cloud_pubsub::builder::topic_admin::ClientBuilder {
        TopicAdmin::builder()
            .with_endpoint(self.endpoint.clone())
            .with_credentials(anonymous::Builder::new().build())
    }

    /// A subscription administration client builder set up for the emulator.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let admin = mqtrace_pubsub::Emulator::new("127.0.0.1:8085").subscription_admin().build().await?;
    /// admin.create_subscription()
    ///     .set_name("projects/p/subscriptions/billing")
    ///     .set_topic("projects/p/topics/orders")
    ///     .send().await?;
    /// # Ok(()) }
    /// ```
    pub fn subscription_admin(
        &self,
    ) -> google_cloud_pubsub::builder::subscription_admin::ClientBuilder {
        SubscriptionAdmin::builder()
            .with_endpoint(self.endpoint.clone())
            .with_credentials(anonymous::Builder::new().build())
    }

    /// Checks, within `timeout`, that the emulator accepts connections and answers a Pub/Sub
    /// call (listing the topics of `project` over its REST API); the error says which of the
    /// two failed.
    ///
    /// Use it before anything else: with a wrong endpoint the clients retry for a long time
    /// before they report an error. It needs no TLS crypto provider.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Nothing listens on port 1.
    /// let e = mqtrace_pubsub::Emulator::new("127.0.0.1:1");
    /// let err = e.check("demo", std::time::Duration::from_secs(2)).await.unwrap_err();
    /// assert!(err.to_string().contains("not reachable"), "{err}");
    /// # }
    /// ```
    pub async fn check(&self, project: &str, timeout: Duration) -> Result<(), EmulatorError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let unreachable = |reason: String| EmulatorError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let not_pubsub = |reason: String| EmulatorError::NotPubSub {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let mut stream = match tokio::time::timeout_at(deadline, connect).await {
            Err(_) => return Err(unreachable(format!("no connection within {timeout:?}"))),
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let authority = self.endpoint.trim_start_matches("http://");
        let request = format!(
            "GET /v1/projects/{project}/topics?pageSize=1 HTTP/1.1\r\nHost: {authority}\r\n\
             Accept: application/json\r\nConnection: close\r\n\r\n"
        );
        let exchange = async {
            stream.write_all(request.as_bytes()).await?;
            let mut head = Vec::with_capacity(256);
            let mut buf = [0u8; 256];
            while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>(head)
        };
        let head = match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => {
                return Err(not_pubsub(format!(
                    "no answer to a topic listing within {timeout:?}"
                )));
            }
            Ok(Err(e)) => return Err(not_pubsub(e.to_string())),
            Ok(Ok(head)) => head,
        };
        let status_line = String::from_utf8_lossy(&head);
        let status_line = status_line.lines().next().unwrap_or_default();
        if status_line.starts_with("HTTP/1.1 200") || status_line.starts_with("HTTP/1.0 200") {
            Ok(())
        } else if status_line.is_empty() {
            Err(not_pubsub("the connection closed without an answer".into()))
        } else {
            Err(not_pubsub(format!(
                "a topic listing was answered with {status_line:?}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Emulator::parse("localhost:8085")
                .map(|e| e.endpoint().to_owned())
                .ok(),
            Some("http://localhost:8085".into())
        );
        assert!(Emulator::parse("localhost").is_err());
        assert!(Emulator::parse(":8085").is_err());
        assert!(Emulator::parse("h:99999").is_err());
        assert_eq!(Emulator::new("http://h:1/").host_port(), ("h", 1));
    }

    /// A local server that accepts and then does `answer` with each connection.
    async fn server(answer: &'static [u8]) -> Emulator {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if !answer.is_empty() {
                        let _ = s.write_all(answer).await;
                        return;
                    }
                    // Say nothing, keep the connection open.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(s);
                });
            }
        });
        Emulator::from_parts("127.0.0.1", port)
    }

    #[tokio::test]
    async fn check_tells_silence_and_other_servers_from_the_emulator() {
        let t = Duration::from_millis(500);
        let started = std::time::Instant::now();
        let silent = server(b"").await.check("p", t).await;
        assert!(
            matches!(&silent, Err(EmulatorError::NotPubSub { reason, .. }) if reason.contains("no answer")),
            "{silent:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        let other = server(b"AMQP\x00\x00\x09\x01").await.check("p", t).await;
        assert!(
            matches!(other, Err(EmulatorError::NotPubSub { .. })),
            "{other:?}"
        );

        let not_found = server(b"HTTP/1.1 404 Not Found\r\n\r\n")
            .await
            .check("p", t)
            .await;
        let text = not_found.map_err(|e| e.to_string()).expect_err("404");
        assert!(text.contains("404"), "{text}");

        let ok = server(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}")
            .await
            .check("p", t)
            .await;
        assert!(ok.is_ok(), "{ok:?}");
    }
}
