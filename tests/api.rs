//! The public gRPC API: health and reflection answer, and bad requests get
//! the right status codes and change nothing.

mod common;

use common::deploy::Deployment;
use common::netns::Network;
use pgquorum::proto::api::pg_quorum_client::PgQuorumClient;
use pgquorum::proto::api::*;
use tonic::Code;

/// What a call answered, its message dropped.
type Outcome = Result<tonic::Response<()>, tonic::Status>;

#[tokio::test(flavor = "multi_thread")]
async fn health_reflection_and_bad_requests() {
    let net = Network::loopback(2);
    let d = Deployment::start(&net, &[]).await;
    let address = d.manager_addresses()[0].clone();
    let channel = pgquorum::transport::lazy_channel(&address).unwrap();

    // gRPC health checking.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "pgquorum.v1.PgQuorum"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    // Server reflection lists the services, so grpcurl needs no proto file.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["pgquorum.v1.PgQuorum", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }

    // Bad requests.
    let mut api = PgQuorumClient::new(channel);
    let before = api
        .get_status(GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let config_before = api
        .get_config(ClusterRequest::default())
        .await
        .unwrap()
        .into_inner();
    let replica = before
        .nodes
        .iter()
        .find(|n| n.role == "replica")
        .unwrap()
        .name
        .clone();
    let cases: Vec<(&str, Code, Outcome)> = vec![
        (
            "unknown cluster",
            Code::NotFound,
            api.get_status(GetStatusRequest {
                cluster: "nope".into(),
                local: false,
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "unknown node",
            Code::NotFound,
            api.restart_node(NodeRequest {
                cluster: String::new(),
                node: "ghost".into(),
                pending_only: false,
                ..NodeRequest::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "restart scheduled in the past",
            Code::InvalidArgument,
            api.restart_node(NodeRequest {
                node: replica.clone(),
                at: "2020-01-01T00:00:00Z".into(),
                ..NodeRequest::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "cancel of a restart never scheduled",
            Code::FailedPrecondition,
            api.restart_node(NodeRequest {
                node: replica.clone(),
                cancel: true,
                ..NodeRequest::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "switchover to the current primary",
            Code::FailedPrecondition,
            api.switchover(SwitchoverRequest {
                to: before.primary.clone(),
                ..Default::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "switchover to an unknown node",
            Code::NotFound,
            api.switchover(SwitchoverRequest {
                to: "ghost".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "failover while the primary is healthy",
            Code::FailedPrecondition,
            api.failover(FailoverRequest {
                cluster: String::new(),
                to: replica.clone(),
                ..Default::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "invalid config value",
            Code::InvalidArgument,
            api.set_config(SetConfigRequest {
                cluster: String::new(),
                changes: [("ttl".to_string(), "soon".to_string())].into(),
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "unknown config key",
            Code::InvalidArgument,
            api.set_config(SetConfigRequest {
                cluster: String::new(),
                changes: [("tll".to_string(), "2s".to_string())].into(),
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "bad switchover time",
            Code::InvalidArgument,
            api.switchover(SwitchoverRequest {
                to: replica.clone(),
                at: "tomorrow".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "manager id 0",
            Code::InvalidArgument,
            api.add_manager(AddManagerRequest {
                id: 0,
                address: "127.0.0.1:1".into(),
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
        (
            "unknown manager",
            Code::NotFound,
            api.remove_manager(RemoveManagerRequest { id: 99 })
                .await
                .map(|r| r.map(|_| ())),
        ),
        (
            "reinit of the primary",
            Code::FailedPrecondition,
            api.reinit_node(NodeRequest {
                cluster: String::new(),
                node: before.primary.clone(),
                pending_only: false,
                ..NodeRequest::default()
            })
            .await
            .map(|r| r.map(|_| ())),
        ),
    ];
    for (what, expected, result) in cases {
        let status = result.expect_err(what);
        assert_eq!(status.code(), expected, "{what}: {}", status.message());
        assert!(!status.message().is_empty(), "{what}: empty message");
    }
    let after = api
        .get_status(GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (after.epoch, &after.primary),
        (before.epoch, &before.primary),
        "a bad request changed the state"
    );
    assert!(after.pending_switchover.is_empty());
    let config_after = api
        .get_config(ClusterRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(config_after.version, config_before.version);
    assert!(after.nodes.iter().all(|n| n.pending_action.is_empty()));
}
