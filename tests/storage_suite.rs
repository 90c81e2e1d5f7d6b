//! openraft's storage test suite, and restart tests, against the sled store.

use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use pgquorum::cluster::{ClusterCommand, ClusterState, Tags};
use pgquorum::manager::store::{self, Durability, LogStore, StateMachineStore, StoreError};
use pgquorum::manager::types::{LogId, StorageError, TypeConfig, Vote};
use tempfile::TempDir;

/// A fresh store in a fresh temporary directory for every build.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().expect("temporary directory");
        let (log, sm) = store::open(dir.path(), Durability::Fsync).expect("open store");
        Ok((dir, log, sm))
    }
}

/// The suite builds its own tokio runtimes: call it outside of one.
#[test]
fn openraft_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite: {e}");
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
}

fn register(name: &str, port: u16) -> ClusterCommand {
    ClusterCommand::RegisterNode {
        cluster: "main".into(),
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        http: "127.0.0.1:8008".into(),
        tags: Tags::default(),
    }
}

fn normal(index: u64, command: ClusterCommand) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(command),
    }
}

fn open(dir: &Path) -> (LogStore, StateMachineStore) {
    store::open(dir, Durability::Fsync).expect("open store")
}

/// Appends through openraft's public API (it has no public callback
/// constructor): a blocking append is what the suite does too.
async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.expect("append");
}

#[tokio::test]
async fn reopen_keeps_vote_log_committed_and_snapshot() {
    let dir = TempDir::new().unwrap();
    let vote = Vote::new_committed(3, 1);
    let state_at_snapshot: ClusterState;
    {
        let (mut log, mut sm) = open(dir.path());
        log.save_vote(&vote).await.unwrap();
        let entries: Vec<_> = (1..=4)
            .map(|i| normal(i, register(&format!("n{i}"), 5432 + i as u16)))
            .collect();
        append(&mut log, entries.clone()).await;
        log.save_committed(Some(log_id(1, 4))).await.unwrap();
        sm.apply(entries[..2].to_vec()).await.unwrap();
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 2)));
        state_at_snapshot = sm.watch().borrow().state.clone();
        // Applied after the snapshot: not persisted by the state machine.
        sm.apply(entries[2..].to_vec()).await.unwrap();
        log.purge(log_id(1, 1)).await.unwrap();
    }
    let (mut log, mut sm) = open(dir.path());
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 4)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(1, 4)));
    let entries = log.try_get_log_entries(0..10).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, [2, 3, 4]);

    // The state machine comes back at the snapshot...
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 2)));
    assert_eq!(sm.watch().borrow().state, state_at_snapshot);
    let current = sm.get_current_snapshot().await.unwrap().expect("snapshot");
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 2)));

    // ...and openraft re-applies the committed entries after it.
    let mut helper = openraft::StorageHelper::new(&mut log, &mut sm);
    helper.get_initial_state().await.unwrap();
    let applied = sm.watch().borrow().clone();
    assert_eq!(applied.last_applied, Some(log_id(1, 4)));
    assert_eq!(applied.state.clusters["main"].members.len(), 4);
}

#[tokio::test]
async fn truncate_leaves_no_hole_after_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _sm) = open(dir.path());
        let entries: Vec<_> = (1..=5).map(|i| normal(i, register("a", 5432))).collect();
        append(&mut log, entries).await;
        log.truncate(log_id(1, 3)).await.unwrap();
        // A durable write flushes the truncation too.
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 2)));
    assert_eq!(log.try_get_log_entries(..).await.unwrap().len(), 2);
}

#[tokio::test]
async fn apply_answers_rejections_and_publishes() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path());
    let mut watch = sm.watch();
    let responses = sm
        .apply(vec![
            normal(1, register("a", 5432)),
            // Same name from another address: refused, not an error.
            normal(2, register("a", 6000)),
            Entry {
                log_id: log_id(1, 3),
                payload: EntryPayload::Blank,
            },
        ])
        .await
        .unwrap();
    assert!(responses[0].0.is_ok());
    assert!(responses[1].0.is_err());
    assert_eq!(responses[2], Default::default());
    assert!(watch.has_changed().unwrap());
    let applied = watch.borrow_and_update().clone();
    assert_eq!(applied.last_applied, Some(log_id(1, 3)));
    assert_eq!(applied.state.clusters["main"].members["a"].port, 5432);
}

#[tokio::test]
async fn installed_snapshot_survives_reopen() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let (_l, mut leader) = open(leader_dir.path());
    leader
        .apply(vec![
            normal(1, register("a", 5432)),
            normal(2, register("b", 5433)),
        ])
        .await
        .unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    {
        let (_f, mut follower) = open(follower_dir.path());
        let watch = follower.watch();
        let mut data = follower.begin_receiving_snapshot().await.unwrap();
        *data = *snapshot.snapshot;
        follower
            .install_snapshot(&snapshot.meta, data)
            .await
            .unwrap();
        assert!(watch.has_changed().unwrap());
        assert_eq!(watch.borrow().state.clusters["main"].members.len(), 2);
    }
    let (_f, mut follower) = open(follower_dir.path());
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        Some(log_id(1, 2))
    );
    assert_eq!(
        follower.watch().borrow().state,
        leader.watch().borrow().state
    );
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
}

#[test]
fn garbage_directory_is_a_typed_error() {
    let dir = TempDir::new().unwrap();
    for name in ["db", "conf"] {
        std::fs::write(dir.path().join(name), vec![0xa5; 64 * 1024]).unwrap();
    }
    let error = store::open(dir.path(), Durability::Fsync)
        .err()
        .expect("must not open");
    let message = error.to_string();
    assert!(matches!(
        error,
        StoreError::Corrupt { .. } | StoreError::Open { .. }
    ));
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("Do not delete"), "{message}");
}

#[test]
fn damaged_data_file_is_a_typed_error() {
    let dir = TempDir::new().unwrap();
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (mut log, _sm) = open(dir.path());
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
            let entries: Vec<_> = (1..=50).map(|i| normal(i, register("a", 5432))).collect();
            append(&mut log, entries).await;
            log.save_committed(Some(log_id(1, 50))).await.unwrap();
            log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        });
    }
    // Damage the end of sled's data file: sled itself then opens an empty
    // database without complaint; the watermark catches it.
    let path = dir.path().join("db");
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len * 9 / 10..] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
    match store::open(dir.path(), Durability::Fsync) {
        Err(StoreError::Corrupt { dir: d, detail }) => {
            assert_eq!(d, dir.path());
            assert!(detail.contains("watermark"), "{detail}");
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a damaged store opened"),
    }
}

#[test]
fn store_in_use_is_a_typed_error() {
    let dir = TempDir::new().unwrap();
    let _first = open(dir.path());
    match store::open(dir.path(), Durability::Fsync) {
        Err(StoreError::Open { .. }) => {}
        Err(other) => panic!("expected an open error, got {other}"),
        Ok(_) => panic!("opened twice"),
    }
}

/// Latency of `append` (one entry, durable before the callback) with and
/// without the fdatasync. Run with `scripts/bench-store`; set `BENCH_DIR`
/// to measure another file system than the temporary directory's.
#[test]
#[ignore]
fn bench_append_latency() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(500);
    let base = std::env::var_os("BENCH_DIR").map(std::path::PathBuf::from);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for durability in [Durability::Fsync, Durability::SledFlushOnly] {
        let dir = match &base {
            Some(base) => TempDir::new_in(base).unwrap(),
            None => TempDir::new().unwrap(),
        };
        let mut micros = rt.block_on(async {
            let (mut log, _sm) = store::open(dir.path(), durability).unwrap();
            let mut micros = Vec::with_capacity(rounds);
            // Index 0 warms up sled and creates its files.
            for i in 0..=rounds as u64 {
                let entry = normal(i, register("node-1", 5432));
                let start = std::time::Instant::now();
                append(&mut log, vec![entry]).await;
                if i > 0 {
                    micros.push(start.elapsed().as_micros() as u64);
                }
            }
            micros
        });
        micros.sort_unstable();
        let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
        let mean = micros.iter().sum::<u64>() / micros.len() as u64;
        println!(
            "bench append+flush {durability:?} in {}: {rounds} appends, mean {mean} µs, \
             p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
            dir.path().display(),
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0),
        );
    }
}
