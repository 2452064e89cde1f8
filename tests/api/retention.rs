//! Retention of finished jobs as the API shows it: a pruned job answers
//! `410 job-pruned` and is left out of listings; its money stays.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

fn job_ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(id_of)
        .collect()
}

/// The embedded store keeps one finished job in full: when the second
/// finishes, the first is pruned at once.
#[actix_web::test]
async fn a_pruned_job_answers_gone_and_its_money_stays() {
    let app = spawn_app_with(|s| {
        s.max_finished_in_memory = 1;
        // The sweep reports what the cap pruned to the metric.
        s.gift_sweep = Duration::from_millis(50);
    })
    .await;
    let (_, key) = register(&app, "pruned@example.com").await;
    let first = id_of(&submit_ok(&app, &key, &image_job()).await);
    wait_for_state(&app, &key, &first, "succeeded", WAIT).await;
    let second = id_of(&submit_ok(&app, &key, &image_job()).await);
    wait_for_state(&app, &key, &second, "succeeded", WAIT).await;

    let gone = app
        .get(&format!("/v1/jobs/{first}"), Some(&key))
        .await
        .expect_problem(410, "job-pruned");
    assert!(gone["pruned_at"].is_string(), "{gone}");
    let operator = app
        .get(&format!("/v1/admin/jobs/{first}"), Some(&app.admin_token))
        .await
        .expect_problem(410, "job-pruned");
    assert_eq!(operator["pruned_at"], gone["pruned_at"]);
    // Its event stream and outputs are gone with it.
    app.get(&format!("/v1/jobs/{first}/events"), Some(&key))
        .await
        .expect_problem(410, "job-pruned");
    // Still finished: it cannot be cancelled.
    app.post(&format!("/v1/jobs/{first}/cancel"), Some(&key))
        .await
        .expect_problem(409, "job-finished");
    // To anyone else it does not exist, pruned or not.
    let (_, other) = register(&app, "other@example.com").await;
    app.get(&format!("/v1/jobs/{first}"), Some(&other))
        .await
        .expect_problem(404, "not-found");

    // The job kept in full reads as before; listings leave the pruned out.
    assert_eq!(app.job(&key, &second).await["state"], "succeeded");
    let mine = app.get("/v1/jobs", Some(&key)).await.expect(200);
    assert_eq!(job_ids(&mine), std::slice::from_ref(&second));
    let all = app
        .get("/v1/admin/jobs?limit=200", Some(&app.admin_token))
        .await
        .expect(200);
    assert!(!job_ids(&all).contains(&first), "{all}");

    // The money: the pruned job's hold and charge are in the ledger, and
    // the wallet is what the ledger says.
    let ledger = app.ledger(&key).await;
    let kinds: Vec<&str> = ledger
        .iter()
        .filter(|e| e["job_id"] == first.as_str())
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["post", "hold"], "newest first");
    let wallet = app.wallet(&key).await;
    assert_eq!(wallet["balance"], ledger[0]["balance"]);
    assert_eq!(wallet["held"], 0);

    let deadline = Instant::now() + WAIT;
    loop {
        let text = app.get("/metrics", None).await.text();
        let pruned = text
            .lines()
            .find(|l| l.starts_with("admedia_jobs_pruned_total "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        if pruned == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "admedia_jobs_pruned_total is {pruned:?}, expected 1"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every ledger entry of the caller, newest first, read `limit` at a time.
async fn ledger_in_pages(app: &TestApp, key: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut path = format!("/v1/wallet/ledger?limit={limit}");
    loop {
        let page = app.get(&path, Some(key)).await.expect(200);
        let entries = page["entries"].as_array().expect("entries");
        assert!(entries.len() <= limit, "{page}");
        all.extend(entries.iter().cloned());
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/wallet/ledger?limit={limit}&before={next}"),
            None => return all,
        }
    }
}

/// Once a pruned job's history is older than the archive's age, its
/// entries and thin record move to object storage: the job answers `404`
/// like any unknown id, and the ledger reads on into the archive, so
/// paging through it gives back exactly the entries it had, in order,
/// with a cursor that crosses from live entries into archived ones. Of
/// three finished jobs, the last `kept` stay in the store.
async fn archived_history_reads_on(app: TestApp, kept: usize) {
    let (_, key) = register(&app, "archived@example.com").await;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let id = id_of(&submit_ok(&app, &key, &image_job()).await);
        wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
        jobs.push(id);
    }
    let before = app.ledger(&key).await;
    assert_eq!(
        before.len(),
        1 + 2 * 3,
        "the grant and each job's hold and post"
    );
    let wallet = app.wallet(&key).await;

    let (archived, live) = jobs.split_at(3 - kept);
    let deadline = Instant::now() + WAIT;
    for id in archived {
        loop {
            let status = app.get(&format!("/v1/jobs/{id}"), Some(&key)).await.status;
            if status == 404 {
                break;
            }
            assert!(
                matches!(status, 200 | 410),
                "finished, pruned, then archived: {status}"
            );
            assert!(Instant::now() < deadline, "job {id} was not archived");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
    app.get(&format!("/v1/jobs/{}", jobs[0]), Some(&key))
        .await
        .expect_problem(404, "not-found");
    // The metric counts what left.
    loop {
        let text = app.get("/metrics", None).await.text();
        let jobs_archived = text
            .lines()
            .find(|l| l.starts_with("admedia_ledger_archived_total{what=\"jobs\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        if jobs_archived == Some(archived.len() as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "admedia_ledger_archived_total{{what=\"jobs\"}} is {jobs_archived:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    for id in live {
        assert_eq!(app.job(&key, id).await["state"], "succeeded");
    }

    // The same entries, whatever the page size.
    for limit in [1, 2, 3, 200] {
        assert_eq!(
            ledger_in_pages(&app, &key, limit).await,
            before,
            "limit {limit}"
        );
    }
    assert_eq!(app.wallet(&key).await, wallet);
    // A cursor inside the archive reads on from there.
    let cursor = before[4]["id"].as_str().expect("id").to_owned();
    let rest = app
        .get(&format!("/v1/wallet/ledger?before={cursor}"), Some(&key))
        .await
        .expect(200);
    assert_eq!(rest["entries"].as_array().expect("entries"), &before[5..]);
    // Bad cursors are refused as before.
    app.get("/v1/wallet/ledger?before=not-a-number", Some(&key))
        .await
        .expect_problem(422, "invalid-params");
}

fn archive_soon(s: &mut admedia::config::Settings) {
    s.ledger_archive_after = admedia::config::ArchiveAfter(Some(Duration::from_millis(300)));
    s.ledger_archive_every = Duration::from_millis(50);
}

#[actix_web::test]
async fn archived_history_leaves_the_embedded_store_and_the_ledger_reads_on() {
    let app = spawn_app_with(|s| {
        // The store keeps one finished job in full: the other two are
        // pruned as the next finishes.
        s.max_finished_in_memory = 1;
        archive_soon(s);
    })
    .await;
    archived_history_reads_on(app, 1).await;
}
