//! How the repository's own clients reach a data port: plain or TLS, with or without `AUTH`,
//! as the pair file's `[clients]` table says.
//!
//! ## Job
//! [`DataEndpoint::of_pair`] turns a pair file into one endpoint per node: its data address,
//! a TLS connector trusting only the pair's CA (presenting the admin certificate when the node
//! asks for a client certificate) when `tls = true`, and the default user's password when
//! `password_file` is set. [`DataEndpoint::connect`] opens a [`RespConn`] through all of it. The
//! drill's workload and read-back use it, so a drill attached to a secured pair passes the
//! credentials; anything else that talks to a node's data port should too.
//!
//! ## Caveats
//! Only the default user: a pair with a `users_file` and no `password_file` cannot be driven by
//! these clients (the drill says so when it is refused).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::workload::RespConn;
use crate::config::PairConfig;
use crate::resp::Frame;
pub use crate::tls::ClientStream;
use crate::Error;

/// One node's data port and how to talk to it.
#[derive(Clone)]
pub struct DataEndpoint {
    pub address: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    password: Option<Bytes>,
}

impl std::fmt::Debug for DataEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataEndpoint")
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .field("password", &self.password.is_some())
            .finish()
    }
}

impl DataEndpoint {
    /// Plain TCP, no `AUTH`.
    pub fn plain(address: SocketAddr) -> DataEndpoint {
        DataEndpoint { address, tls: None, password: None }
    }

    /// The same credentials sent to `address` over plain TCP: a client of `hotpair proxy`,
    /// which forwards its `AUTH` to the primary.
    pub fn via(&self, address: SocketAddr) -> DataEndpoint {
        DataEndpoint { address, tls: None, password: self.password.clone() }
    }

    /// Every node's data port of `pair`, in pair-file order.
    pub fn of_pair(pair: &PairConfig) -> Result<Vec<DataEndpoint>, Error> {
        let password = match &pair.clients.password_file {
            Some(path) => Some(Bytes::from(crate::server::auth::read_password(path)?)),
            None => None,
        };
        let connector = match pair.clients.tls {
            true => Some(TlsConnector::from(crate::tls::data_client_config(
                pair,
                crate::tls::app_client_files(pair).as_ref(),
            )?)),
            false => None,
        };
        Ok(pair
            .nodes
            .iter()
            .map(|node| DataEndpoint {
                address: node.data,
                tls: connector.clone().map(|c| (c, crate::tls::data_server_name(pair, &node.name))),
                password: password.clone(),
            })
            .collect())
    }

    /// Connects, runs the TLS handshake and `AUTH` as configured, all within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> std::io::Result<RespConn> {
        let timed_out = || {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {} took over {timeout:?}", self.address),
            )
        };
        tokio::time::timeout(timeout, self.connect_now()).await.map_err(|_| timed_out())?
    }

    async fn connect_now(&self) -> std::io::Result<RespConn> {
        let tcp = TcpStream::connect(self.address).await?;
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => ClientStream::Plain(tcp),
            Some((connector, name)) => ClientStream::Tls(Box::new(connector.connect(name.clone(), tcp).await?)),
        };
        let mut conn = RespConn::over(stream);
        if let Some(password) = &self.password {
            let auth =
                Frame::array(vec![Frame::bulk(Bytes::from_static(b"AUTH")), Frame::Bulk(Some(password.clone()))]);
            match conn.request(&auth).await? {
                Frame::Simple(ok) if ok == "OK" => {}
                other => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("AUTH at {} was refused: {other:?}", self.address),
                    ))
                }
            }
        }
        Ok(conn)
    }
}
