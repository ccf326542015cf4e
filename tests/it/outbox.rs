//! The mail outbox: claims and leases, two workers on one database, retries and failures
//! against a real SMTP server, resumption after a restart, metrics.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use annuaire::config::HumanDuration;
use annuaire::mail::OutgoingMessage;
use annuaire::mail::outbox::{enqueue, supersede};
use annuaire::store::outbox as store;
use diesel::Connection;

use crate::mail_smtp::Sink;
use crate::support::{self, Builder, TestServer, eventually};
use crate::validation::{AGENT, base, drained, outbox, request, smtp};

fn message(n: usize, to: &str) -> OutgoingMessage {
    let id = format!(
        "{}-{n}@id.test.example",
        annuaire::secret::random_id().to_lowercase()
    );
    OutgoingMessage {
        from: "noreply@id.test.example".into(),
        to: to.into(),
        message_id: id.clone(),
        raw: format!(
            "From: noreply@id.test.example\r\nTo: {to}\r\nMessage-ID: <{id}>\r\n\
             Subject: outbox test {n}\r\n\r\nbody {n}\r\n"
        )
        .into_bytes(),
    }
}

/// Queues messages in one transaction through `s`'s database and wakes its worker.
async fn queue(s: &TestServer, messages: Vec<(OutgoingMessage, String)>) {
    let now = annuaire::clock::Clock::now_ms(s.app.clock.as_ref());
    s.app
        .db
        .run(move |conn| {
            conn.transaction::<_, annuaire::store::StoreError, _>(|conn| {
                for (msg, key) in &messages {
                    assert!(enqueue(conn, msg, "test", key, now)?);
                }
                Ok(())
            })
        })
        .await
        .unwrap();
    s.app.mailer.wake();
}

fn eml_names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".eml"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_claimed_row_is_not_claimed_again_until_its_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let db = annuaire::store::Db::connect(
        &support::database_url(dir.path()),
        2,
        Duration::from_secs(10),
    )
    .unwrap();
    db.migrate().unwrap();
    let mut conn = db.get().unwrap();
    let conn = &mut *conn;
    let msg = message(1, "agent@finances.gouv.example");
    assert!(enqueue(conn, &msg, "test", "k1", 1_000).unwrap());
    // The same logical mail again is a no-op.
    assert!(
        !enqueue(
            conn,
            &message(2, "agent@finances.gouv.example"),
            "test",
            "k1",
            1_000
        )
        .unwrap()
    );
    assert_eq!(store::list(conn).unwrap().len(), 1);

    let row = store::claim(conn, "A", 1_000, 61_000).unwrap().unwrap();
    assert_eq!(row.message_id, msg.message_id);
    assert_eq!(row.body.as_deref(), Some(msg.raw.as_slice()));
    assert_eq!(row.attempts, 0);
    // Held by A: nobody else gets it while the lease lasts.
    assert!(store::claim(conn, "B", 1_000, 61_000).unwrap().is_none());
    assert!(store::claim(conn, "B", 61_000, 121_000).unwrap().is_none());
    assert_eq!(store::next_due(conn, 1_000).unwrap(), Some(61_001));
    // A mail being sent is not superseded: it goes out and is recorded as sent.
    assert!(!supersede(conn, "test", "k1", 1_000).unwrap());
    // A died: after the lease, B claims the row, and A can no longer finish it.
    let again = store::claim(conn, "B", 61_001, 121_001).unwrap().unwrap();
    assert_eq!(again.id, row.id);
    assert!(!store::mark_sent(conn, &row.id, "A", 1, 61_002).unwrap());
    assert!(store::mark_sent(conn, &row.id, "B", 1, 61_002).unwrap());
    assert!(store::claim(conn, "C", 500_000, 560_000).unwrap().is_none());
    let rows = store::list(conn).unwrap();
    assert_eq!(rows[0].status, "sent");
    assert!(!rows[0].has_body && !rows[0].has_recipient);
    assert_eq!(rows[0].recipient_domain, "finances.gouv.example");
    assert_eq!(store::queued_stats(conn).unwrap(), (0, None));

    // A transient failure: due again later, not before.
    assert!(
        enqueue(
            conn,
            &message(3, "x@finances.gouv.example"),
            "test",
            "k3",
            2_000
        )
        .unwrap()
    );
    assert_eq!(store::queued_stats(conn).unwrap(), (1, Some(2_000)));
    let r = store::claim(conn, "A", 2_000, 62_000).unwrap().unwrap();
    assert!(store::mark_retry(conn, &r.id, "A", 1, "connection refused", 7_000).unwrap());
    assert!(store::claim(conn, "A", 6_999, 66_999).unwrap().is_none());
    assert_eq!(store::next_due(conn, 6_999).unwrap(), Some(7_000));
    let r = store::claim(conn, "A", 7_000, 67_000).unwrap().unwrap();
    assert_eq!(r.attempts, 1);
    assert!(store::mark_failed(conn, &r.id, "A", 2, "550 rejected", 7_001).unwrap());

    // A superseded mail is never claimed.
    assert!(
        enqueue(
            conn,
            &message(4, "y@finances.gouv.example"),
            "test",
            "k4",
            3_000
        )
        .unwrap()
    );
    assert!(supersede(conn, "test", "k4", 3_001).unwrap());
    assert!(!supersede(conn, "test", "k4", 3_002).unwrap());
    assert!(store::claim(conn, "A", 100_000, 160_000).unwrap().is_none());
    assert_eq!(store::next_due(conn, 100_000).unwrap(), None);

    // The purge removes finished rows past the retention, never queued ones.
    assert!(
        enqueue(
            conn,
            &message(5, "z@finances.gouv.example"),
            "test",
            "k5",
            4_000
        )
        .unwrap()
    );
    assert_eq!(store::purge_finished(conn, 3_001).unwrap(), 0);
    assert_eq!(store::purge_finished(conn, 1_000_000).unwrap(), 3);
    let left = store::list(conn).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].status, "queued");
}

#[tokio::test]
async fn two_workers_on_one_database_never_send_a_row_twice() {
    let a = Builder::new()
        .config(|c, dir| c.mail.file.dir = Some(dir.join("mail-a")))
        .start()
        .await;
    let url = a.app.config.database_url();
    let b = Builder::new()
        .config(move |c, dir| {
            c.database.url = Some(url);
            c.mail.file.dir = Some(dir.join("mail-b"));
        })
        .start()
        .await;
    const N: usize = 120;
    let messages: Vec<(OutgoingMessage, String)> = (0..N)
        .map(|n| (message(n, "agent@finances.gouv.example"), format!("m{n}")))
        .collect();
    let ids: BTreeSet<String> = messages
        .iter()
        .map(|(m, _)| format!("{}.eml", m.message_id))
        .collect();
    queue(&a, messages).await;
    b.app.mailer.wake();
    drained(&a).await;
    let rows = outbox(&a).await;
    assert_eq!(rows.len(), N);
    assert!(
        rows.iter().all(|r| r.status == "sent" && r.attempts == 1),
        "{rows:?}"
    );
    let in_a = eml_names(&a.dir.path().join("mail-a"));
    let in_b = eml_names(&b.dir.path().join("mail-b"));
    eprintln!("worker A sent {}, worker B sent {}", in_a.len(), in_b.len());
    assert_eq!(in_a.len() + in_b.len(), N, "every row sent exactly once");
    let all: BTreeSet<String> = in_a.into_iter().chain(in_b).collect();
    assert_eq!(all, ids);
}

#[tokio::test]
async fn permanent_failures_stop_at_once_and_transient_ones_retry_up_to_the_limit() {
    let sink = Sink::start(&[
        "--reject-rcpt",
        "gone@finances.gouv.example",
        "--defer-rcpt",
        "busy@finances.gouv.example",
    ]);
    let s = smtp(Builder::new(), sink.port)
        .config(|c, _| {
            c.mail.outbox.initial_backoff = HumanDuration(Duration::from_millis(50));
            c.mail.outbox.max_backoff = HumanDuration(Duration::from_millis(200));
            c.mail.outbox.max_attempts = 3;
        })
        .start()
        .await;
    queue(
        &s,
        vec![
            (message(1, "gone@finances.gouv.example"), "gone".into()),
            (message(2, "busy@finances.gouv.example"), "busy".into()),
            (message(3, "agent@finances.gouv.example"), "ok".into()),
        ],
    )
    .await;
    drained(&s).await;
    let rows = outbox(&s).await;
    let row = |key: &str| rows.iter().find(|r| r.dedupe_key == key).unwrap().clone();
    let gone = row("gone");
    assert_eq!((gone.status.as_str(), gone.attempts), ("failed", 1));
    let error = gone.last_error.unwrap();
    assert!(error.contains("550") && !error.contains('@'), "{error}");
    let busy = row("busy");
    assert_eq!((busy.status.as_str(), busy.attempts), ("failed", 3));
    assert!(busy.last_error.unwrap().contains("451"));
    let ok = row("ok");
    assert_eq!((ok.status.as_str(), ok.attempts), ("sent", 1));
    assert!(rows.iter().all(|r| !r.has_body && !r.has_recipient));
    assert_eq!(sink.messages().len(), 1);

    eventually(Duration::from_secs(10), "the outbox metrics", async || {
        let text = s.get("/metrics").await.text;
        [
            "annuaire_outbox_sent_total",
            "annuaire_outbox_failed_total",
            "annuaire_outbox_retries_total",
            "annuaire_outbox_queued",
            "annuaire_outbox_oldest_unsent_seconds",
        ]
        .iter()
        .all(|name| text.contains(name))
    })
    .await;
}

#[tokio::test]
async fn a_restarted_instance_delivers_what_was_queued_before() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = smtp(base(Builder::new()), port)
        .config(|c, _| {
            c.mail.outbox.initial_backoff = HumanDuration(Duration::from_millis(100));
            c.mail.outbox.max_backoff = HumanDuration(Duration::from_millis(300));
        })
        .start()
        .await;
    let r = request(&s, AGENT, "restart", 1).await;
    let sid = r.assert_ok()["sid"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(20), "a failed delivery", async || {
        outbox(&s).await.first().is_some_and(|r| r.attempts >= 1)
    })
    .await;
    let config = s.app.config.as_ref().clone();
    let dir = s.dir.clone();
    s.stop();

    let sink = Sink::start(&["--port", &port.to_string()]);
    let s = Builder::in_dir(dir, config).start().await;
    eventually(
        Duration::from_secs(60),
        "delivery after the restart",
        async || sink.messages().len() == 1,
    )
    .await;
    drained(&s).await;
    let rows = outbox(&s).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "sent");
    assert_eq!(rows[0].dedupe_key, format!("{sid}:1"));
}
