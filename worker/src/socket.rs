//! A worker's WebSocket to the orchestrator: dialing it with the protocol's
//! limits and sending it messages. Shared by the agent and the load
//! tester's simulated workers, so both open the socket the same way.

use std::time::Duration;

use actix_codec::Framed;
use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use admedia_actors::wire::FromWorker;
use awc::error::WsClientError;
use awc::http::header::{HeaderValue, AUTHORIZATION};
use awc::http::Uri;
use awc::ws::{Codec, Message};
use awc::BoxedSocket;
use futures_util::future::LocalBoxFuture;
use futures_util::SinkExt;

/// An open worker connection.
pub type Socket = Framed<BoxedSocket, Codec>;

/// Connecting, including the HTTP upgrade.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server answers `hello` at once; longer means something is wrong.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// The protocol's frame limit, both ways.
pub const MAX_FRAME: usize = 64 * 1024;

/// awc's TCP connector with `TCP_NODELAY` on every connection. A worker's
/// frames are small and come in pairs (`accept`, then `complete` moments
/// later); with Nagle's algorithm the second waits for the server's delayed
/// ACK, which holds every slot's turnaround to about 40 ms on Linux.
#[derive(Clone, Default)]
pub struct NoDelayConnector(ConnectorService);

impl Service<ConnectInfo<Uri>> for NoDelayConnector {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let connecting = self.0.call(req);
        Box::pin(async move {
            let connection = connecting.await?;
            let _ = connection.io_ref().set_nodelay(true);
            Ok(connection)
        })
    }
}

/// awc's connector for a worker's socket: TCP with `TCP_NODELAY`; the
/// agent adds TLS to it for a `wss://` server.
pub fn connector() -> awc::Connector<NoDelayConnector> {
    awc::Connector::new().connector(NoDelayConnector::default())
}

/// Opens the worker endpoint `url` (`ws://…/v1/workers/connect`) with the
/// worker token's `Authorization` header and the protocol's frame limit.
pub async fn dial(
    client: &awc::Client,
    url: &str,
    authorization: HeaderValue,
) -> Result<Socket, WsClientError> {
    let (_, ws) = client
        .ws(url)
        .header(AUTHORIZATION, authorization)
        .max_frame_size(MAX_FRAME)
        .connect()
        .await?;
    Ok(ws)
}

/// Sends one message as a text frame.
pub async fn send(ws: &mut Socket, message: &FromWorker) -> Result<(), String> {
    let text = serde_json::to_string(message).map_err(|e| format!("cannot encode: {e}"))?;
    send_frame(ws, Message::Text(text.into())).await
}

/// Sends one frame.
pub async fn send_frame(ws: &mut Socket, frame: Message) -> Result<(), String> {
    ws.send(frame)
        .await
        .map_err(|e| format!("cannot send to the server: {e}"))
}
