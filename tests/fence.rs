//! The per-lead write fence against a real nats-server: what two routers see when they race
//! on one lead, and what a late, older event gets.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::NatsServer;
use leadrouter::config::StreamsConfig;
use leadrouter::pipeline::fence::{Fence, Gate};

async fn fences(nats: &NatsServer) -> (Fence, Fence) {
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    leadrouter::queue::topology::ensure(&js, &StreamsConfig::default(), &[])
        .await
        .expect("topology");
    let kv = || async { js.get_key_value("leads_fence").await.expect("bucket") };
    // Two routers: each its own Fence (its own memory of what it wrote).
    (
        Fence::new(kv().await, Duration::from_secs(30)),
        Fence::new(kv().await, Duration::from_secs(30)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_never_write_one_lead_at_once_and_a_late_older_event_is_superseded() {
    let nats = NatsServer::start();
    let (a, b) = fences(&nats).await;
    let group = "g1";

    // Router A writes event 7; router B's event 9 must wait while A is inside.
    let Gate::Open(held_a) = a.enter(group, 7, "router-a/h0").await.unwrap() else {
        panic!("the first event of a lead enters")
    };
    assert!(matches!(
        b.enter(group, 9, "router-b/h0").await.unwrap(),
        Gate::Busy(_)
    ));
    // Another handler of A's own router may enter (the dispatcher serialises a lead there).
    // A leaves; now B enters with 9.
    a.leave(held_a).await.unwrap();
    let Gate::Open(held_b) = b.enter(group, 9, "router-b/h0").await.unwrap() else {
        panic!("B enters once A is out")
    };
    b.leave(held_b).await.unwrap();

    // A's event 7 comes back (a NAK-delayed retry after its partition moved): superseded, even
    // though A's own memory still says it wrote 7 last.
    assert!(matches!(
        a.enter(group, 7, "router-a/h0").await.unwrap(),
        Gate::Superseded { by: 9 }
    ));
    // A newer event enters wherever it is (A's stale memory costs one failed update).
    let Gate::Open(held) = a.enter(group, 10, "router-a/h1").await.unwrap() else {
        panic!("a newer event enters")
    };
    a.leave(held).await.unwrap();
    let stored = b.get(group).await.unwrap().expect("fence stored");
    assert_eq!((stored.seq, stored.writing), (10, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_writers_fence_frees_after_its_lease() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    leadrouter::queue::topology::ensure(&js, &StreamsConfig::default(), &[])
        .await
        .expect("topology");
    let kv = js.get_key_value("leads_fence").await.expect("bucket");
    let short = Fence::new(kv.clone(), Duration::from_millis(300));
    let other = Fence::new(kv, Duration::from_secs(30));
    // Router A enters and dies (never leaves).
    let Gate::Open(_lost) = short.enter("g2", 3, "router-a/h0").await.unwrap() else {
        panic!("enters")
    };
    let Gate::Busy(_) = other.enter("g2", 4, "router-b/h0").await.unwrap() else {
        panic!("A's live lease holds B off")
    };
    // B retries as its NAK delays would bring the event back; the lease runs out on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match other.enter("g2", 4, "router-b/h0").await.unwrap() {
            Gate::Open(_) => break,
            Gate::Busy(wait) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lease never ran out"
                );
                tokio::time::sleep(wait).await;
            }
            Gate::Superseded { by } => panic!("superseded by {by}"),
        }
    }
}
