//! Synthetic agents: real agent sessions against real managers, with a
//! PostgreSQL that exists only as a few numbers.
//!
//! Each agent registers, keeps a session with the leader open (redialing
//! whoever leads when it breaks), sends a report every heartbeat, claims
//! and holds the lease as the primary, and carries out the commands it
//! receives on its synthetic server at once: bootstrap makes a primary,
//! promote a primary on the next timeline, follow a replica streaming from
//! the upstream, fence stops it; the others are acknowledged. The primary's
//! LSN advances with every report and its replicas replay up to it.
//!
//! Many agents run in one process (one task each, one connection each, as
//! separate hosts would). What they saw is kept for measurements: the delay
//! from each report to the grant that answers it, and every command
//! received with its arrival time.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgquorum::channel::{decode, encode, leader_hint};
use pgquorum::cluster::lsn::Lsn;
use pgquorum::cluster::wire::{
    Action, AgentCommand, AgentPhase, CommandOutcome, DataDirState, LeaderHint, ManagerMessage,
    NodeReport, PgStatus, Registration, ReplicaConnection, WalReceiver,
};
use pgquorum::proto::agent::agent_channel_client::AgentChannelClient;
use pgquorum::proto::agent::AgentEnvelope;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Status;

/// WAL the primary writes between two reports.
const WAL_PER_REPORT: u64 = 16 * 1024;
/// How long a promote or bootstrap waits for the lease (as `await_lease`).
const AWAIT_LEASE: Duration = Duration::from_secs(2);
/// Grants remembered per agent (by report sequence number).
const REMEMBERED: usize = 64;

/// The synthetic server of one node, as its cluster's other nodes see it.
#[derive(Debug, Clone, Default)]
pub struct PgView {
    /// Running as primary / as replica; both false while down.
    pub primary: bool,
    pub replica: bool,
    pub timeline: u32,
    pub lsn: u64,
    pub upstream: Option<String>,
    /// The agent's process runs (false once silenced).
    pub alive: bool,
    /// Epoch and end of the lease it holds.
    pub epoch: u64,
    pub lease_until: Option<Instant>,
    /// When the last grant that counted arrived.
    pub last_grant: Option<Instant>,
}

impl PgView {
    /// A running primary with a lease that has not run out.
    pub fn leased_primary(&self) -> bool {
        self.alive && self.primary && self.lease_until.is_some_and(|u| u > Instant::now())
    }
}

/// Every node's view, by cluster and node.
pub type World = Arc<Mutex<BTreeMap<String, BTreeMap<String, PgView>>>>;

/// A command as an agent received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub cluster: String,
    pub node: String,
    pub action: &'static str,
    pub epoch: u64,
}

/// What the agents measured.
#[derive(Debug, Default)]
pub struct Stats {
    pub reports: AtomicU64,
    /// Lease messages received (answering a report this agent sent).
    pub lease_messages: AtomicU64,
    /// Reports answered by a grant (each counted once).
    pub grants: AtomicU64,
    /// Report sent → first grant for it received, in microseconds.
    pub grant_delays_us: Mutex<Vec<u32>>,
    pub commands: Mutex<Vec<Received>>,
    /// Registrations the managers refused ("cluster/node: message"); such
    /// an agent stops, as a real one does.
    pub refused: Mutex<Vec<String>>,
}

impl Stats {
    /// Forget the delays measured so far (start of a window).
    pub fn reset_delays(&self) {
        self.grant_delays_us.lock().unwrap().clear();
    }

    /// The first command `action` a node of `cluster` received after `since`.
    pub fn first_after(&self, cluster: &str, action: &str, since: Instant) -> Option<Received> {
        self.commands
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.cluster == cluster && c.action == action && c.at >= since)
            .min_by_key(|c| c.at)
            .cloned()
    }
}

/// A fleet of synthetic agents.
pub struct Fleet {
    pub world: World,
    pub stats: Arc<Stats>,
    agents: BTreeMap<(String, String), JoinHandle<()>>,
}

/// A fixed system identifier per cluster.
fn system_identifier(cluster: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cluster.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h | 1
}

impl Fleet {
    /// Start `nodes` agents for every cluster in `clusters` (nodes named
    /// `n1`, `n2`…), talking to the managers at `managers`.
    pub fn start(managers: &[String], clusters: &[String], nodes: usize) -> Fleet {
        let world: World = Arc::default();
        let stats: Arc<Stats> = Arc::default();
        let mut agents = BTreeMap::new();
        let mut port = 10_000u16;
        for cluster in clusters {
            for i in 1..=nodes {
                let node = format!("n{i}");
                port = port.wrapping_add(1).max(10_000);
                world
                    .lock()
                    .unwrap()
                    .entry(cluster.clone())
                    .or_default()
                    .insert(
                        node.clone(),
                        PgView {
                            alive: true,
                            ..PgView::default()
                        },
                    );
                let agent = Agent::new(
                    managers.to_vec(),
                    cluster.clone(),
                    node.clone(),
                    port,
                    world.clone(),
                    stats.clone(),
                );
                agents.insert((cluster.clone(), node), tokio::spawn(agent.run()));
            }
        }
        Fleet {
            world,
            stats,
            agents,
        }
    }

    /// The node of `cluster` running as primary with a valid lease.
    pub fn leased_primary(&self, cluster: &str) -> Option<(String, u64)> {
        let world = self.world.lock().unwrap();
        world
            .get(cluster)?
            .iter()
            .find(|(_, v)| v.leased_primary())
            .map(|(n, v)| (n.clone(), v.epoch))
    }

    /// Every cluster's leased primary and its epoch (clusters without one
    /// are left out).
    pub fn leased_primaries(&self) -> BTreeMap<String, (String, u64)> {
        let world = self.world.lock().unwrap();
        world
            .iter()
            .filter_map(|(c, nodes)| {
                nodes
                    .iter()
                    .find(|(_, v)| v.leased_primary())
                    .map(|(n, v)| (c.clone(), (n.clone(), v.epoch)))
            })
            .collect()
    }

    /// Every cluster's primary got a grant after `since`.
    pub fn all_granted_since(&self, since: Instant) -> bool {
        let world = self.world.lock().unwrap();
        world.values().all(|nodes| {
            nodes
                .values()
                .any(|v| v.alive && v.primary && v.last_grant.is_some_and(|g| g > since))
        })
    }

    /// The node's agent goes silent: its session drops and no report
    /// follows (as a host that died with its PostgreSQL).
    pub fn silence(&mut self, cluster: &str, node: &str) {
        if let Some(handle) = self.agents.remove(&(cluster.to_string(), node.to_string())) {
            handle.abort();
        }
        if let Some(v) = self
            .world
            .lock()
            .unwrap()
            .get_mut(cluster)
            .and_then(|c| c.get_mut(node))
        {
            v.alive = false;
            v.primary = false;
            v.replica = false;
        }
    }

    /// How many agents run.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Stop every agent.
    pub fn stop(&mut self) {
        for (_, handle) in std::mem::take(&mut self.agents) {
            handle.abort();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a command waiting for the lease will make of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Becoming {
    /// Bootstrap or start: the current timeline (1 when new).
    Primary,
    /// Promote: the next timeline.
    Promoted,
}

/// One synthetic agent and its server.
struct Agent {
    managers: Vec<String>,
    cluster: String,
    node: String,
    port: u16,
    world: World,
    stats: Arc<Stats>,
    session: u64,
    seq: u64,
    /// Persisted in a real agent: survives sessions.
    epoch: u64,
    intent_primary: bool,
    upstream: Option<(String, String, u16)>,
    config_version: u64,
    completed_action: Option<u64>,
    last_command: Option<CommandOutcome>,
    phase: AgentPhase,
    fences: u64,
    sync_names: String,
    // The server.
    data: bool,
    running_primary: bool,
    running_replica: bool,
    timeline: u32,
    lsn: u64,
    // The lease.
    sent: VecDeque<(u64, Instant)>,
    floor_seq: u64,
    lease_until: Option<Instant>,
    lease_seq: u64,
    /// The latest report a grant answered (measurements).
    answered_seq: u64,
    last_grant: Option<Instant>,
    waiting: Option<(AgentCommand, Becoming, Instant)>,
    interval: Duration,
}

impl Agent {
    fn new(
        managers: Vec<String>,
        cluster: String,
        node: String,
        port: u16,
        world: World,
        stats: Arc<Stats>,
    ) -> Agent {
        Agent {
            managers,
            cluster,
            node,
            port,
            world,
            stats,
            session: rand::random::<u64>() | 1,
            seq: 0,
            epoch: 0,
            intent_primary: false,
            upstream: None,
            config_version: 0,
            completed_action: None,
            last_command: None,
            phase: AgentPhase::Idle,
            fences: 0,
            sync_names: String::new(),
            data: false,
            running_primary: false,
            running_replica: false,
            timeline: 0,
            lsn: 0,
            sent: VecDeque::new(),
            floor_seq: 0,
            lease_until: None,
            lease_seq: 0,
            answered_seq: 0,
            last_grant: None,
            waiting: None,
            interval: Duration::from_millis(250),
        }
    }

    async fn run(mut self) {
        if !self.register().await {
            return;
        }
        let mut hint: Option<String> = None;
        loop {
            let address = match hint.take() {
                Some(h) => h,
                None => find_leader(&self.managers).await,
            };
            if let Err(status) = self.session_with(&address).await {
                if let Some(h) = leader_hint(&status).filter(|h| *h != address) {
                    hint = Some(h);
                    continue;
                }
                if status.code() == tonic::Code::NotFound && !self.register().await {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Register (retried until a leader answers); false when refused.
    async fn register(&self) -> bool {
        let registration = Registration {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            host: "127.0.0.1".to_string(),
            port: self.port,
            http: "127.0.0.1:1".to_string(),
            tags: Default::default(),
        };
        let envelope = encode(&registration).expect("json");
        let mut hint: Option<String> = None;
        loop {
            let mut list: Vec<String> = hint.take().into_iter().collect();
            list.extend(self.managers.iter().cloned());
            for address in list {
                let Ok(channel) = pgquorum::transport::lazy_channel(&address) else {
                    continue;
                };
                let mut api = AgentChannelClient::new(channel);
                let mut request = tonic::Request::new(envelope.clone());
                request.set_timeout(Duration::from_secs(10));
                match api.register(request).await {
                    Ok(_) => return true,
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::FailedPrecondition
                                | tonic::Code::InvalidArgument
                                | tonic::Code::Unauthenticated
                        ) =>
                    {
                        self.stats.refused.lock().unwrap().push(format!(
                            "{}/{}: {}",
                            self.cluster,
                            self.node,
                            status.message()
                        ));
                        return false;
                    }
                    Err(status) => {
                        if let Some(h) = leader_hint(&status) {
                            hint = Some(h);
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One session; returns when it breaks.
    async fn session_with(&mut self, address: &str) -> Result<(), Status> {
        let channel = pgquorum::transport::lazy_channel(address)
            .map_err(|_| Status::invalid_argument("bad address"))?;
        let mut api = AgentChannelClient::new(channel);
        let (up, up_rx) = mpsc::channel::<AgentEnvelope>(16);
        let first = self.report();
        up.send(encode(&first)?)
            .await
            .map_err(|_| Status::internal("closed"))?;
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            api.session(tokio_stream::wrappers::ReceiverStream::new(up_rx)),
        )
        .await
        .map_err(|_| Status::unavailable("the manager did not answer in time"))??;
        let mut down = response.into_inner();
        let mut next_report = tokio::time::Instant::now() + self.interval;
        let mut last_good = tokio::time::Instant::now();
        loop {
            let silence = (self.interval * 2).max(Duration::from_millis(400));
            let give_up = last_good + silence;
            let mut report_now = false;
            tokio::select! {
                _ = tokio::time::sleep_until(next_report) => report_now = true,
                _ = tokio::time::sleep_until(give_up) => return Ok(()),
                message = down.message() => {
                    let Some(message) = message? else { return Ok(()) };
                    let Ok(message) = decode::<ManagerMessage>(&message) else { continue };
                    if !matches!(message, ManagerMessage::Ack { quorum: false, .. }) {
                        last_good = tokio::time::Instant::now();
                    }
                    match message {
                        ManagerMessage::Welcome { heartbeat_interval_ms, .. } => {
                            self.interval =
                                Duration::from_millis(heartbeat_interval_ms.clamp(50, 5000));
                        }
                        ManagerMessage::Lease(grant) => {
                            if self.grant(&grant) && self.waiting.is_some() {
                                self.finish_waiting();
                                report_now = true;
                            }
                        }
                        ManagerMessage::Command(command) => {
                            self.command(command);
                            report_now = true;
                        }
                        ManagerMessage::Poll => report_now = true,
                        ManagerMessage::Refused { reason } => {
                            return Err(Status::not_found(reason))
                        }
                        ManagerMessage::Ack { .. } | ManagerMessage::Members { .. } => {}
                    }
                }
            }
            if report_now {
                self.tick();
                let report = self.report();
                if up.send(encode(&report)?).await.is_err() {
                    return Ok(());
                }
                next_report = tokio::time::Instant::now() + self.interval;
            }
        }
    }

    /// Time passes on the server: WAL is written, replicas replay, an
    /// expired lease fences the primary, a wait for the lease gives up.
    fn tick(&mut self) {
        let now = Instant::now();
        if self.running_primary {
            if self.lease_until.is_none_or(|u| u <= now) {
                self.fence();
            } else {
                self.lsn += WAL_PER_REPORT;
            }
        }
        if let Some((command, _, deadline)) = &self.waiting {
            if *deadline <= now {
                let id = command.id;
                let action = command.action.name();
                self.waiting = None;
                self.intent_primary = false;
                self.phase = AgentPhase::Idle;
                self.outcome(id, action, false, "no lease within 2s");
            }
        }
        if self.running_replica {
            if let Some(up) = self.upstream_view() {
                if up.primary && up.alive && up.timeline == self.timeline {
                    self.lsn = self.lsn.max(up.lsn);
                }
            }
        }
    }

    fn upstream_view(&self) -> Option<PgView> {
        let (node, _, _) = self.upstream.as_ref()?;
        self.world
            .lock()
            .unwrap()
            .get(&self.cluster)?
            .get(node)
            .cloned()
    }

    fn fence(&mut self) {
        if self.running_primary || self.running_replica {
            self.fences += 1;
        }
        self.running_primary = false;
        self.running_replica = false;
        self.phase = AgentPhase::Fenced;
    }

    fn lease_valid(&self) -> bool {
        self.lease_until.is_some_and(|u| u > Instant::now())
    }

    /// `Lease::grant`: counts from the send time of the report it answers.
    fn grant(&mut self, g: &pgquorum::cluster::wire::LeaseGrant) -> bool {
        let now = Instant::now();
        let Some(sent_at) = self
            .sent
            .iter()
            .find(|(seq, _)| *seq == g.seq)
            .map(|(_, at)| *at)
        else {
            return false;
        };
        self.stats.lease_messages.fetch_add(1, Ordering::Relaxed);
        if g.seq > self.answered_seq {
            // The first grant answering this report (the leader repeats
            // the latest one).
            self.answered_seq = g.seq;
            self.stats.grants.fetch_add(1, Ordering::Relaxed);
            let delay = now.saturating_duration_since(sent_at).as_micros();
            self.stats
                .grant_delays_us
                .lock()
                .unwrap()
                .push(delay.min(u128::from(u32::MAX)) as u32);
        }
        if g.session != self.session || g.epoch != self.epoch || g.seq <= self.floor_seq {
            return false;
        }
        let until = sent_at + Duration::from_millis(g.ttl_ms);
        if until <= now || self.lease_until.is_some_and(|u| u >= until) {
            return false;
        }
        self.lease_until = Some(until);
        self.lease_seq = g.seq;
        self.last_grant = Some(now);
        true
    }

    fn release_lease(&mut self) {
        self.floor_seq = self.seq;
        self.lease_until = None;
        self.lease_seq = 0;
    }

    fn outcome(&mut self, id: u64, action: &str, ok: bool, message: &str) {
        self.last_command = Some(CommandOutcome {
            id,
            ok,
            message: message.to_string(),
            action: action.to_string(),
        });
    }

    /// The lease arrived for a command waiting for it.
    fn finish_waiting(&mut self) {
        let Some((command, becoming, _)) = self.waiting.take() else {
            return;
        };
        if !self.data {
            self.data = true;
            self.timeline = 1;
        }
        if becoming == Becoming::Promoted || self.running_replica {
            self.timeline += 1;
        }
        self.running_primary = true;
        self.running_replica = false;
        self.upstream = None;
        self.phase = AgentPhase::Idle;
        self.outcome(command.id, command.action.name(), true, "primary");
    }

    fn command(&mut self, command: AgentCommand) {
        let action = command.action.name();
        self.stats.commands.lock().unwrap().push(Received {
            at: Instant::now(),
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            action,
            epoch: command.epoch,
        });
        if command.epoch < self.epoch {
            let message = format!("stale epoch {}", command.epoch);
            self.outcome(command.id, action, false, &message);
            return;
        }
        if command.epoch > self.epoch {
            self.epoch = command.epoch;
        }
        let id = command.id;
        match &command.action {
            Action::Bootstrap { settings }
            | Action::StartPrimary { settings }
            | Action::Promote { settings } => {
                self.config_version = settings.config_version;
                self.sync_names = settings.synchronous_standby_names.clone();
                let becoming = if matches!(command.action, Action::Promote { .. }) {
                    self.phase = AgentPhase::Promoting;
                    Becoming::Promoted
                } else {
                    self.phase = AgentPhase::Starting;
                    Becoming::Primary
                };
                self.intent_primary = true;
                self.waiting = Some((command.clone(), becoming, Instant::now() + AWAIT_LEASE));
                if self.lease_valid() {
                    self.finish_waiting();
                }
            }
            Action::Follow {
                upstream, settings, ..
            } => {
                self.config_version = settings.config_version;
                self.follow(upstream.node.clone(), upstream.host.clone(), upstream.port);
                self.outcome(id, action, true, "following");
            }
            Action::Reinit {
                upstream,
                action_id,
            } => {
                self.follow(upstream.node.clone(), upstream.host.clone(), upstream.port);
                self.completed_action = Some(*action_id);
                self.outcome(id, action, true, "recloned");
            }
            Action::Demote => {
                self.running_primary = false;
                self.intent_primary = false;
                self.release_lease();
                self.outcome(id, action, true, "stopped");
            }
            Action::Detach => {
                self.upstream = None;
                self.outcome(id, action, true, "detached");
            }
            Action::Fence { .. } => {
                self.intent_primary = false;
                self.waiting = None;
                self.fence();
                self.release_lease();
                self.outcome(id, action, true, "fenced");
            }
            Action::Restart { action_id, .. } | Action::Reload { action_id } => {
                self.completed_action = Some(*action_id);
                self.outcome(id, action, true, "done");
            }
            Action::Configure { settings } => {
                self.config_version = settings.config_version;
                self.sync_names = settings.synchronous_standby_names.clone();
                self.outcome(id, action, true, "configured");
            }
        }
    }

    /// Stream from `node`: a clone when there is no data, the upstream's
    /// timeline from then on.
    fn follow(&mut self, node: String, host: String, port: u16) {
        self.waiting = None;
        self.intent_primary = false;
        self.release_lease();
        self.upstream = Some((node, host, port));
        let up = self.upstream_view();
        self.data = true;
        if let Some(up) = up {
            self.timeline = up.timeline.max(1);
            self.lsn = up.lsn;
        }
        self.running_primary = false;
        self.running_replica = true;
        self.phase = AgentPhase::Idle;
    }

    fn status(&self, world: &BTreeMap<String, PgView>) -> Option<PgStatus> {
        let lsn = Lsn(self.lsn);
        if self.running_primary {
            let replicas = world
                .iter()
                .filter(|(_, v)| v.alive && v.replica && v.upstream.as_deref() == Some(&self.node))
                .map(|(name, v)| ReplicaConnection {
                    application_name: name.clone(),
                    state: "streaming".into(),
                    flush_lsn: Lsn(v.lsn),
                    replay_lsn: Lsn(v.lsn),
                    sync_state: "async".into(),
                })
                .collect();
            return Some(PgStatus {
                in_recovery: false,
                timeline: self.timeline,
                system_identifier: system_identifier(&self.cluster),
                lsn,
                received_lsn: lsn,
                replay_lsn: lsn,
                wal_receiver: None,
                replicas,
                synchronous_standby_names: self.sync_names.clone(),
                pending_restart: false,
            });
        }
        if self.running_replica {
            let wal_receiver = self.upstream.as_ref().and_then(|(node, host, port)| {
                let up = world.get(node)?;
                (up.alive && up.primary && up.timeline == self.timeline).then(|| WalReceiver {
                    status: "streaming".into(),
                    sender_host: host.clone(),
                    sender_port: *port,
                })
            });
            return Some(PgStatus {
                in_recovery: true,
                timeline: self.timeline,
                system_identifier: system_identifier(&self.cluster),
                lsn,
                received_lsn: lsn,
                replay_lsn: lsn,
                wal_receiver,
                replicas: Vec::new(),
                synchronous_standby_names: String::new(),
                pending_restart: false,
            });
        }
        None
    }

    /// The next report; publishes this node's view to its cluster.
    fn report(&mut self) -> NodeReport {
        let now = Instant::now();
        self.seq += 1;
        self.sent.push_back((self.seq, now));
        while self.sent.len() > REMEMBERED {
            self.sent.pop_front();
        }
        self.stats.reports.fetch_add(1, Ordering::Relaxed);
        let postgres = {
            let mut world = self.world.lock().unwrap();
            let nodes = world.entry(self.cluster.clone()).or_default();
            let postgres = self.status(nodes);
            let view = nodes.entry(self.node.clone()).or_default();
            view.primary = self.running_primary;
            view.replica = self.running_replica;
            view.timeline = self.timeline;
            view.lsn = self.lsn;
            view.upstream = self.upstream.as_ref().map(|u| u.0.clone());
            view.alive = true;
            view.epoch = self.epoch;
            view.lease_until = self.lease_until;
            view.last_grant = self.last_grant;
            postgres
        };
        let data = if self.data {
            DataDirState::Valid {
                system_identifier: system_identifier(&self.cluster),
                timeline: self.timeline,
                standby: !self.running_primary,
                clean_shutdown: false,
                checkpoint_lsn: Lsn(self.lsn),
            }
        } else {
            DataDirState::Empty
        };
        NodeReport {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            seq: self.seq,
            session: self.session,
            epoch: self.epoch,
            phase: self.phase,
            data,
            postgres,
            wants_lease: self.intent_primary,
            holds_lease: self.lease_valid(),
            last_command: self.last_command.clone(),
            completed_action: self.completed_action,
            config_version: self.config_version,
            upstream: self.upstream.as_ref().map(|u| u.0.clone()),
            lease_open: false,
            lease_seq: self.lease_seq,
            promise_ms: 0,
            unresponsive_ms: 0,
            commit_gate: true,
            settings: None,
            wants_config: false,
            restart_to_load_slots: false,
            fences: self.fences,
        }
    }
}

/// Ask every manager who leads until the leader answers for itself.
async fn find_leader(managers: &[String]) -> String {
    loop {
        let asks = managers.iter().map(|address| async move {
            let channel = pgquorum::transport::lazy_channel(address).ok()?;
            let mut api = AgentChannelClient::new(channel);
            let ask = api.who_leads(encode(&()).ok()?);
            let reply = tokio::time::timeout(Duration::from_millis(500), ask)
                .await
                .ok()?
                .ok()?;
            decode::<LeaderHint>(&reply.into_inner()).ok()
        });
        let answers = futures::future::join_all(asks).await;
        if let Some(address) = answers
            .into_iter()
            .flatten()
            .filter(|h| h.leader == Some(h.manager))
            .max_by_key(|h| h.term)
            .and_then(|h| h.leader_address)
        {
            return address;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
