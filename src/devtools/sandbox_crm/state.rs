//! The one lock every request and the handle take: faults, idempotency mode, records and the
//! HubSpot and Salesforce personalities.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use super::faults::{Faults, Scope, ScopeState};
use super::hubspot::HubspotState;
use super::records::{Data, IdempotencyMode};
use super::salesforce::SalesforceState;

pub(super) struct State {
    pub(super) idempotency: IdempotencyMode,
    pub(super) crm: ScopeState,
    pub(super) analytics: ScopeState,
    pub(super) data: Data,
    pub(super) hubspot: HubspotState,
    pub(super) salesforce: SalesforceState,
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// The bound address: Salesforce's `instance_url` when a request has no `Host`.
    pub(super) addr: SocketAddr,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a test double; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn set_faults(st: &mut State, scope: Scope, faults: Faults) {
    if matches!(scope, Scope::All | Scope::Crm) {
        st.crm = ScopeState::new(faults.clone());
    }
    if matches!(scope, Scope::All | Scope::Analytics) {
        st.analytics = ScopeState::new(faults);
    }
}

pub(super) fn reset(st: &mut State) {
    st.data = Data::default();
    st.idempotency = IdempotencyMode::Honor;
    st.hubspot = HubspotState::default();
    st.salesforce = SalesforceState::default();
    set_faults(st, Scope::All, Faults::default());
}
