//! awc's TCP connector with `TCP_NODELAY` on every connection. A worker's
//! frames are small and come in pairs (`accept`, then `complete` moments
//! later); with Nagle's algorithm the second waits for the server's delayed
//! ACK, which holds every slot's turnaround to about 40 ms on Linux.

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;

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
