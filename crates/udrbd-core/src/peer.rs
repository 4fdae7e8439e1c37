//! The peer: connection, handshake, replication and resync (in progress).

use crate::engine::{Pending, Resource};
use crate::peer_config::PeerStatus;
use crate::state::{CommandError, StateChangeError};
use crate::types::*;

impl Resource {
    pub(crate) fn on_peer_input(&mut self, _input: PeerInput) {}

    pub(crate) fn start_peer_command(
        &mut self,
        _cmd: AdminCommand,
    ) -> Result<Option<Pending>, CommandError> {
        Err(CommandError::StateChange(StateChangeError::NoNetConfig))
    }

    pub(crate) fn peer_status(&self) -> Option<PeerStatus> {
        None
    }
}
