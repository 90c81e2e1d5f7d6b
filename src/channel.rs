//! What the manager and the agent share about the agent channel (and the
//! public API's redirects): the JSON-in-protobuf codec and the metadata
//! header naming the leader. Below both, so that neither imports the other.

use tonic::Status;

use crate::proto::agent::AgentEnvelope;

/// Metadata naming the leader's address on an UNAVAILABLE answer.
pub const LEADER_HEADER: &str = "pgquorum-leader";

/// The message in an envelope.
pub fn decode<T: serde::de::DeserializeOwned>(envelope: &AgentEnvelope) -> Result<T, Status> {
    serde_json::from_slice(&envelope.payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable message: {e}")))
}

/// A message in an envelope.
pub fn encode<T: serde::Serialize>(body: &T) -> Result<AgentEnvelope, Status> {
    serde_json::to_vec(body)
        .map(|payload| AgentEnvelope { payload })
        .map_err(|e| Status::internal(e.to_string()))
}

/// The leader's address a follower put on its refusal.
pub fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
