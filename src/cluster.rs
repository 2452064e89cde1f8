//! Scale-out: any number of nodes on one PostgreSQL; exactly one runs the
//! active scheduler.
//!
//! Each node campaigns for a session-level PostgreSQL advisory lock on a
//! dedicated connection. The holder starts a new term in the store (the
//! epoch goes up), rebuilds its waiting line from the database and
//! dispatches; the others stand by, polling the lock. The leader checks its
//! lock connection every tenth of `ADMEDIA_LEADER_TIMEOUT`; when the
//! connection dies (process killed, network cut) PostgreSQL releases the
//! lock and a standby takes over, and the old leader, if it still runs,
//! stops dispatching as soon as it notices. Safety does not rest on that
//! timing: every assignment names its term, and the store refuses one from
//! a term that has ended.
//!
//! The lock connection also LISTENs for jobs that start waiting on any
//! node, so they reach the active scheduler at once.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use admedia_actors::domain::ids::JobId;
use admedia_actors::Orchestrator;
use futures_util::StreamExt;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::store::postgres::WAITING_CHANNEL;

/// The advisory lock every node campaigns for ("admedia" in ASCII).
const LEADER_LOCK: i64 = 0x0061_646d_6564_6961;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Leader { epoch: u64 },
    Standby,
}

/// What this node is, for `/readyz`, stats and workers that connect.
pub struct NodeState {
    pub id: String,
    pub url: String,
    role: RwLock<Role>,
}

impl NodeState {
    pub fn new(id: String, url: String, role: Role) -> Arc<NodeState> {
        Arc::new(NodeState {
            id,
            url,
            role: RwLock::new(role),
        })
    }

    pub fn role(&self) -> Role {
        self.role.read().clone()
    }

    fn set(&self, role: Role) {
        *self.role.write() = role;
    }
}

/// Campaigns, leads, and stands down again, forever.
pub async fn run_election(
    database_url: String,
    orchestrator: Orchestrator,
    node: Arc<NodeState>,
    leader_timeout: Duration,
    worker_lease: Duration,
) {
    let mut config = match tokio_postgres::Config::from_str(&database_url) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "DATABASE_URL unusable for the election");
            return;
        }
    };
    let check_every = (leader_timeout / 10).max(Duration::from_millis(100));
    let query_timeout = (leader_timeout / 5).max(Duration::from_millis(200));
    config.connect_timeout(query_timeout);
    loop {
        let (client, connection) = match config.connect(NoTls).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "election: cannot reach PostgreSQL; retrying");
                tokio::time::sleep(check_every).await;
                continue;
            }
        };
        // Drive the connection; forward notifications; a closed channel
        // means the connection (and with it the lock) is gone.
        let (notify_tx, mut notifications) = mpsc::unbounded_channel::<String>();
        let mut connection = connection;
        actix_rt::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = notify_tx.send(n.payload().to_owned());
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });

        // Campaign.
        let won = loop {
            match tokio::time::timeout(
                query_timeout,
                client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]),
            )
            .await
            {
                Ok(Ok(row)) if row.get::<_, bool>(0) => break true,
                Ok(Ok(_)) => tokio::time::sleep(check_every).await,
                _ => break false,
            }
        };
        if !won {
            continue;
        }
        if let Err(e) = client
            .batch_execute(&format!("LISTEN {WAITING_CHANNEL}"))
            .await
        {
            tracing::warn!(error = %e, "election: LISTEN failed; campaigning again");
            continue;
        }
        let epoch = match orchestrator
            .promote(&node.id, &node.url, worker_lease)
            .await
        {
            Ok(epoch) => epoch,
            Err(e) => {
                tracing::warn!(error = %e, "election: could not start a term; campaigning again");
                continue;
            }
        };
        node.set(Role::Leader { epoch });
        tracing::info!(node = %node.id, epoch, "this node leads the cluster");

        // Lead while the lock connection lives and no newer term exists.
        loop {
            tokio::select! {
                note = notifications.recv() => match note {
                    Some(payload) => {
                        for job in payload.split(',').filter_map(|id| id.parse::<JobId>().ok()) {
                            orchestrator.job_waiting(job);
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep(check_every) => {
                    let alive = matches!(
                        tokio::time::timeout(query_timeout, client.simple_query("SELECT 1")).await,
                        Ok(Ok(_))
                    );
                    if !alive || orchestrator.epoch().await != Some(epoch) {
                        break;
                    }
                }
            }
        }
        orchestrator.demote();
        node.set(Role::Standby);
        tracing::warn!(node = %node.id, epoch, "this node no longer leads; standing by");
        drop(client);
    }
}
