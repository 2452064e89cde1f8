//! Three nodes on one PostgreSQL: the leader is killed during load, a
//! standby takes over within the leader timeout, every job finishes, no
//! credit is lost or doubled, and no job ran twice at the same time. A
//! leader cut off from the database stops dispatching before its successor
//! starts.

mod support;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{Api, ServerProcess, ADMIN_TOKEN};

const LEADER_TIMEOUT_SECS: u64 = 5;

fn node_env(db: &str, name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.to_owned()),
        ("ADMEDIA_NODE_ID", name.to_owned()),
        ("ADMEDIA_LEADER_TIMEOUT", format!("{LEADER_TIMEOUT_SECS}s")),
        ("ADMEDIA_SIM_WORKERS", "2".to_owned()),
        ("ADMEDIA_SIM_SLOTS", "2".to_owned()),
        ("ADMEDIA_SIM_JOB_MS", "40".to_owned()),
        ("ADMEDIA_SIM_FAILURE_RATE", "0.1".to_owned()),
        // Failures here are injected at random into every simulated GPU,
        // not a broken one: quarantine would only stall the run.
        ("ADMEDIA_QUARANTINE_AFTER", "100".to_owned()),
        ("ADMEDIA_RETRY_BASE_MS", "20".to_owned()),
        ("ADMEDIA_RETRY_MAX_MS", "100".to_owned()),
        ("ADMEDIA_WORKER_LEASE_MS", "1500".to_owned()),
        // No real worker presents attempts here: lose them quickly.
        ("ADMEDIA_REPRESENT_GRACE", "1500ms".to_owned()),
        ("ADMEDIA_REGISTRATION_CREDITS", "5000".to_owned()),
        (
            "ADMEDIA_RATE_LIMITS",
            "free=0,basic=0,professional=0,enterprise=0".to_owned(),
        ),
    ]
}

/// `(role, epoch)` of a node, from its `/readyz`.
async fn role(api: &Api) -> Option<(String, Option<u64>)> {
    let (status, body) = api.call("GET", "/readyz", "", None, &[]).await.ok()?;
    if status != 200 {
        return None;
    }
    Some((
        body["node"]["role"].as_str()?.to_owned(),
        body["node"]["epoch"].as_u64(),
    ))
}

/// Waits until exactly one of `apis` leads; its index and epoch.
async fn await_leader(apis: &[&Api], within: Duration) -> (usize, u64) {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        for (i, api) in apis.iter().enumerate() {
            if let Some((r, epoch)) = role(api).await {
                if r == "leader" {
                    leaders.push((i, epoch.unwrap_or(0)));
                }
            }
        }
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single leader within {within:?}: {leaders:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes a user Enterprise, so many of their jobs may wait and run at once.
async fn make_enterprise(api: &Api, user: &str) {
    let (status, body) = api
        .call(
            "PUT",
            &format!("/v1/admin/users/{user}/membership"),
            ADMIN_TOKEN,
            Some(json!({"tier": "enterprise", "expires_at": null})),
            &[],
        )
        .await
        .expect("membership");
    assert_eq!(status, 200, "{body}");
}

async fn db_client(url: &str) -> tokio_postgres::Client {
    let config = tokio_postgres::Config::from_str(url).expect("url");
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    actix_rt::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// No two attempts of one job overlapped in time.
async fn assert_no_overlap(db: &tokio_postgres::Client) {
    let rows = db
        .query(
            "SELECT job_id, attempt, assigned_at, finished_at FROM job_attempts ORDER BY job_id, attempt",
            &[],
        )
        .await
        .expect("attempts");
    let mut last: HashMap<uuid::Uuid, (i32, Option<chrono::DateTime<chrono::Utc>>)> =
        HashMap::new();
    for r in rows {
        let job: uuid::Uuid = r.get(0);
        let attempt: i32 = r.get(1);
        let assigned: chrono::DateTime<chrono::Utc> = r.get(2);
        let finished: Option<chrono::DateTime<chrono::Utc>> = r.get(3);
        if let Some((prev, prev_finished)) = last.get(&job) {
            let prev_finished = prev_finished.unwrap_or_else(|| {
                panic!("job {job}: attempt {prev} never ended but {attempt} started")
            });
            assert!(
                assigned >= prev_finished,
                "job {job}: attempt {attempt} began before attempt {prev} ended"
            );
        }
        last.insert(job, (attempt, finished));
    }
}

#[actix_web::test]
async fn leader_killed_during_load_is_replaced_and_nothing_is_lost_or_doubled() {
    let Some(db) = support::fresh_database().await else {
        return;
    };
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        nodes.push(ServerProcess::start(&node_env(&db, name)).await);
    }
    let apis: Vec<Api> = nodes.iter().map(|n| Api::new(&n.base)).collect();
    let refs: Vec<&Api> = apis.iter().collect();
    let (leader, first_epoch) = await_leader(&refs, Duration::from_secs(20)).await;

    let mut users = Vec::new();
    for u in 0..3 {
        let api = &apis[u % 3];
        let (id, key) = api.register(&format!("cluster{u}@example.com")).await;
        make_enterprise(api, &id).await;
        users.push(key);
    }

    // 180 jobs through all three nodes; the leader dies a third of the way.
    const JOBS: usize = 180;
    let mut unanswered = Vec::new();
    let mut killed_at = None;
    for i in 0..JOBS {
        if i == JOBS / 3 {
            nodes[leader].kill();
            killed_at = Some(Instant::now());
        }
        let node = i % 3;
        let key = &users[i % users.len()];
        let body = json!({"kind": "image", "model": "sdxl", "prompt": format!("cluster {i}")});
        let idem = format!("cluster-{i}");
        match apis[node]
            .call(
                "POST",
                "/v1/jobs",
                key,
                Some(body),
                &[("Idempotency-Key", &idem)],
            )
            .await
        {
            Ok((202, _)) => {}
            _ => unanswered.push(i),
        }
    }
    let killed_at = killed_at.expect("killed");
    let survivors: Vec<&Api> = apis
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, a)| a)
        .collect();
    let (new_leader, new_epoch) =
        await_leader(&survivors, Duration::from_secs(LEADER_TIMEOUT_SECS * 3)).await;
    assert!(new_epoch > first_epoch);
    let takeover = killed_at.elapsed();
    eprintln!("failover: leader killed -> a standby leads after {takeover:?}");
    assert!(
        takeover <= Duration::from_secs(LEADER_TIMEOUT_SECS),
        "a standby took {takeover:?} to lead, more than ADMEDIA_LEADER_TIMEOUT"
    );
    let api = survivors[new_leader];
    for i in unanswered {
        let key = &users[i % users.len()];
        let body = json!({"kind": "image", "model": "sdxl", "prompt": format!("cluster {i}")});
        let idem = format!("cluster-{i}");
        let (status, b) = api
            .call(
                "POST",
                "/v1/jobs",
                key,
                Some(body),
                &[("Idempotency-Key", &idem)],
            )
            .await
            .expect("resubmit");
        assert_eq!(status, 202, "{b}");
    }

    support::await_no_open_jobs(api, Duration::from_secs(90)).await;
    let mut total = 0;
    for key in &users {
        total += support::audit_user(api, key).await.len();
    }
    assert_eq!(total, JOBS, "one job per idempotency key");
    assert_no_overlap(&db_client(&db).await).await;
}

#[actix_web::test]
async fn a_leader_cut_off_from_the_database_stops_before_its_successor_starts() {
    let Some(db) = support::fresh_database().await else {
        return;
    };
    let url = tokio_postgres::Config::from_str(&db).expect("url");
    let host = match url.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = url.get_ports().first().copied().unwrap_or(5432);
    let proxy = support::CuttableProxy::start(format!("{host}:{port}")).await;
    let via_proxy = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        url.get_user().unwrap_or("postgres"),
        proxy.port,
        url.get_dbname().unwrap_or("test")
    );
    let a = ServerProcess::start(&node_env(&via_proxy, "node-a")).await;
    let api_a = Api::new(&a.base);
    let (_, epoch_a) = await_leader(&[&api_a], Duration::from_secs(20)).await;
    let b = ServerProcess::start(&node_env(&db, "node-b")).await;
    let api_b = Api::new(&b.base);
    let (user, key) = api_b.register("partition@example.com").await;
    make_enterprise(&api_b, &user).await;
    for i in 0..10 {
        let body = json!({"kind": "image", "model": "sdxl", "prompt": format!("before {i}")});
        assert_eq!(
            api_b
                .call("POST", "/v1/jobs", &key, Some(body), &[])
                .await
                .expect("submit")
                .0,
            202
        );
    }

    proxy.cut();
    let (_, epoch_b) = await_leader(&[&api_b], Duration::from_secs(LEADER_TIMEOUT_SECS * 3)).await;
    assert!(epoch_b > epoch_a);
    for i in 0..10 {
        let body = json!({"kind": "image", "model": "sdxl", "prompt": format!("after {i}")});
        assert_eq!(
            api_b
                .call("POST", "/v1/jobs", &key, Some(body), &[])
                .await
                .expect("submit")
                .0,
            202
        );
    }
    // The old leader learns it no longer leads.
    let deadline = Instant::now() + Duration::from_secs(LEADER_TIMEOUT_SECS * 2);
    loop {
        let (_, stats) = api_a
            .call("GET", "/healthz", "", None, &[])
            .await
            .unwrap_or((0, Value::Null));
        if stats["node"]["role"] == "standby" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cut-off leader still believes it leads: {stats}"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = api_b.all_pages("/v1/jobs", "jobs", &key).await;
        if jobs
            .iter()
            .all(|j| j["state"] == "succeeded" || j["state"] == "failed")
        {
            break;
        }
        assert!(Instant::now() < deadline, "jobs did not finish");
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    support::audit_user(&api_b, &key).await;
    // The database's own record: every assignment of the old term was made
    // before the new term began.
    let client = db_client(&db).await;
    let since: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT since FROM cluster_leader WHERE id = 1", &[])
        .await
        .expect("leader")
        .get(0);
    let late: i64 = client
        .query_one(
            "SELECT count(*) FROM job_attempts WHERE epoch < $1 AND assigned_at >= $2",
            &[&i64::try_from(epoch_b).unwrap_or(i64::MAX), &since],
        )
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(
        late, 0,
        "a deposed scheduler assigned work after its successor was elected"
    );
    assert_no_overlap(&client).await;
    drop(a);
}

#[actix_web::test]
async fn a_worker_that_connects_to_a_standby_is_sent_to_the_leader() {
    let Some(db) = support::fresh_database().await else {
        return;
    };
    let mut env_a = node_env(&db, "node-a");
    env_a.push(("ADMEDIA_SIM_WORKERS", "0".to_owned()));
    let a = ServerProcess::start(&env_a).await;
    let api_a = Api::new(&a.base);
    await_leader(&[&api_a], Duration::from_secs(20)).await;
    let mut env_b = node_env(&db, "node-b");
    env_b.push(("ADMEDIA_SIM_WORKERS", "0".to_owned()));
    let b = ServerProcess::start(&env_b).await;
    let api_b = Api::new(&b.base);
    assert_eq!(role(&api_b).await.map(|r| r.0).as_deref(), Some("standby"));

    // The agent is pointed at the standby.
    let mut agent = std::process::Command::new(support::worker_bin())
        .args([
            "--server",
            &b.base.replacen("http", "ws", 1),
            "--token",
            "test-worker-token-0123456789abcdef012",
        ])
        .args([
            "--executor",
            "simulate",
            "--sim-job-ms",
            "20",
            "--slots",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start the agent");
    let (_, key) = api_b.register("redirected@example.com").await;
    let body = json!({"kind": "image", "model": "sdxl", "prompt": "via the leader"});
    let (status, job) = api_b
        .call("POST", "/v1/jobs", &key, Some(body), &[])
        .await
        .expect("submit");
    assert_eq!(status, 202);
    let id = job["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, j) = api_b
            .call("GET", &format!("/v1/jobs/{id}"), &key, None, &[])
            .await
            .expect("job");
        if j["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never ran: {j}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, workers) = api_a
        .call("GET", "/v1/admin/workers", ADMIN_TOKEN, None, &[])
        .await
        .expect("workers");
    assert_eq!(
        workers["workers"].as_array().map(Vec::len),
        Some(1),
        "the agent is on the leader: {workers}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
    drop((a, b));
}
