//! The caller's proof: where `peer_binding` takes the caller from a WIMSE proof, the WIT and the WPT are
//! checked here, each signature through `Step::VerifySignature` like the Txn-Token's, before the delegation
//! rules compare the proven workload with the acting agent. Kept apart from the token flow: the flow calls
//! `Gate::prove_caller` when it authorizes a verified token and [`Gate::resume_proof`] for a WIMSE
//! signature.

use std::sync::Arc;

use crate::policy::PeerBinding;
use crate::token::VerifiedToken;
use crate::wimse::{
    self, PeerSource, Presented, ProvenBy, RequestBinding, WimseError, Wit, WitCheck, WptCheck,
};

use super::pending::Signed;
use super::*;

/// The WIMSE inputs of a request and where their check stands; carried by the evaluation until the caller
/// is proven (then dropped).
#[derive(Debug)]
pub(super) struct ProofState {
    presented: Result<Presented, WimseError>,
    /// The Txn-Token exactly as presented (the WPT's `tth` covers it).
    txn_token: String,
    path: String,
    /// Every request header, for `ath` and `oth` (kept only when a proof is presented).
    headers: Vec<(String, String)>,
    /// False at the body-holding header stage (`Body::Held`): the proof is checked but its `jti` is not
    /// remembered, so that the full decision of the same request is not taken for a replay.
    remember: bool,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    Start,
    Wit {
        check: WitCheck,
        token: Arc<VerifiedToken>,
    },
    Wpt {
        wit: Box<Wit>,
        check: WptCheck,
        token: Arc<VerifiedToken>,
    },
}

impl Gate {
    /// What the proof check needs from the request, when the policy takes the caller from a WIMSE proof.
    pub(super) fn gather_proof(&self, request: &Request<'_>) -> Option<Box<ProofState>> {
        if self.policy.peer_binding == PeerBinding::Off
            || self.policy.peer_source == PeerSource::Mtls
        {
            return None;
        }
        let presented = wimse::presented(request.headers);
        let headers = match presented {
            Ok(Presented::Both { .. }) => request.headers.to_vec(),
            _ => Vec::new(),
        };
        Some(Box::new(ProofState {
            presented,
            txn_token: self
                .token_header(request)
                .map(str::to_string)
                .unwrap_or_default(),
            path: request.path.to_string(),
            headers,
            // The body-holding header stage checks the proof again at the full decision: the jti is taken then.
            remember: request.body != Body::Held,
            stage: Stage::Start,
        }))
    }

    /// Called when a verified token is authorized. `Ok(ev)`: go on (`ev.peer` is then the caller the
    /// delegation rules bind); `Err(step)`: a signature to check, or a refusal.
    pub(super) fn prove_caller(
        &mut self,
        mut ev: Evaluation,
        token: &Arc<VerifiedToken>,
    ) -> Result<Evaluation, Box<Step>> {
        let binding = self.policy.peer_binding;
        let source = self.policy.peer_source;
        if binding == PeerBinding::Off {
            return Ok(ev);
        }
        let Some(state) = ev.wimse.take() else {
            // The mTLS peer, or a proof already checked (its caller is in `ev.peer`).
            if source == PeerSource::Mtls {
                if let Some(peer) = &ev.peer {
                    ev.audit.caller = Some(peer.clone());
                    ev.audit.caller_proof = Some(ProvenBy::Mtls.name());
                }
            }
            return Ok(ev);
        };
        let Some(rules) = self.policy.wimse.as_ref() else {
            return Ok(ev);
        };
        let wit = match &state.presented {
            Err(e) => return Err(self.deny_proof(ev, e)),
            Ok(Presented::Absent) => {
                if source == PeerSource::Wimse {
                    ev.peer = None;
                    if binding == PeerBinding::Require {
                        let e = WimseError::ProofMissing {
                            detail: "the request has no Workload-Identity-Token and Workload-Proof-Token",
                        };
                        return Err(self.deny_proof(ev, &e));
                    }
                } else if let Some(peer) = &ev.peer {
                    ev.audit.caller = Some(peer.clone());
                    ev.audit.caller_proof = Some(ProvenBy::Mtls.name());
                }
                return Ok(ev);
            }
            Ok(Presented::Both { wit, .. }) => wit.clone(),
        };
        match WitCheck::start(rules, &self.keys, &wit, ev.now_ms) {
            Err(e) => {
                // An unknown kid or unusable keys of a remote trust domain: the host refetches (debounced),
                // exactly as for a Txn-Token issuer.
                ev.refetch = match &e {
                    WimseError::UnknownKid { refetch, .. } => refetch
                        .iter()
                        .copied()
                        .find(|i| self.keys.claim_refetch(*i, ev.now_ms)),
                    WimseError::KeysUnavailable { entry, .. } => {
                        Some(*entry).filter(|i| self.keys.claim_refetch(*i, ev.now_ms))
                    }
                    _ => ev.refetch,
                };
                Err(self.deny_proof(ev, &e))
            }
            Ok(check) => {
                let mut pending = pending_for(ev, check.jwt());
                pending.ev.wimse = Some(Box::new(ProofState {
                    stage: Stage::Wit {
                        check,
                        token: Arc::clone(token),
                    },
                    ..*state
                }));
                Err(Box::new(Step::VerifySignature(Box::new(pending))))
            }
        }
    }

    /// Continues after the host checked a WIT's or a WPT's signature.
    pub(super) fn resume_proof(&mut self, pending: PendingSignature, valid: bool) -> Step {
        let PendingSignature { mut ev, .. } = pending;
        let Some(mut state) = ev.wimse.take() else {
            return self.deny_proof_step(ev, &WimseError::WitSignature);
        };
        let Some(rules) = self.policy.wimse.clone() else {
            return self.deny_proof_step(ev, &WimseError::WitSignature);
        };
        match std::mem::replace(&mut state.stage, Stage::Start) {
            Stage::Start => self.deny_proof_step(ev, &WimseError::WitSignature),
            Stage::Wit { check, token } => {
                if !valid {
                    return self.deny_proof_step(ev, &WimseError::WitSignature);
                }
                let wit = match check.finish(&rules, ev.now_ms) {
                    Ok(wit) => wit,
                    Err(e) => return self.deny_proof_step(ev, &e),
                };
                let raw_wpt = match &state.presented {
                    Ok(Presented::Both { wpt, .. }) => wpt.clone(),
                    _ => String::new(),
                };
                match WptCheck::start(&rules, &wit, &raw_wpt) {
                    Err(e) => self.deny_proof_step(ev, &e),
                    Ok(check) => {
                        let mut pending = pending_for(ev, check.jwt());
                        state.stage = Stage::Wpt {
                            wit: Box::new(wit),
                            check,
                            token,
                        };
                        pending.ev.wimse = Some(state);
                        Step::VerifySignature(Box::new(pending))
                    }
                }
            }
            Stage::Wpt { wit, check, token } => {
                if !valid {
                    return self.deny_proof_step(ev, &WimseError::WptSignature);
                }
                let binding = RequestBinding {
                    path: &state.path,
                    txn_token: &state.txn_token,
                    headers: &state.headers,
                };
                if let Err(e) = check.finish(
                    &rules,
                    &wit,
                    &binding,
                    &mut self.replay,
                    state.remember,
                    ev.now_ms,
                ) {
                    return self.deny_proof_step(ev, &e);
                }
                if self.policy.peer_source == PeerSource::MtlsOrWimse {
                    if let Some(peer) = ev.peer.as_ref().filter(|p| **p != wit.sub) {
                        let message = format!(
                            "the mTLS peer {peer:?} and the WIMSE proof ({:?}) name different workloads",
                            wit.sub
                        );
                        return Step::Done(Box::new(self.deny(
                            ev,
                            403,
                            "delegation.peer_mismatch",
                            &message,
                            Vec::new(),
                        )));
                    }
                }
                ev.audit.caller = Some(wit.sub.clone());
                ev.audit.caller_proof = Some(ProvenBy::Wimse.name());
                ev.peer = Some(wit.sub.clone());
                self.authorize(ev, token)
            }
        }
    }

    fn deny_proof(&self, ev: Evaluation, e: &WimseError) -> Box<Step> {
        Box::new(self.deny_proof_step(ev, e))
    }

    fn deny_proof_step(&self, ev: Evaluation, e: &WimseError) -> Step {
        let headers = match e {
            WimseError::ReplayCacheFull { .. } => {
                vec![("retry-after".to_string(), "1".to_string())]
            }
            // As a Txn-Token issuer's unavailable keys.
            WimseError::KeysUnavailable { .. } => {
                vec![("retry-after".to_string(), "5".to_string())]
            }
            _ => Vec::new(),
        };
        Step::Done(Box::new(self.deny(
            ev,
            e.status(),
            e.reason(),
            &e.to_string(),
            headers,
        )))
    }
}

/// The pending signature of a WIT or WPT (the issuer index is unused: the key is in the JWT job).
fn pending_for(ev: Evaluation, jwt: &wimse::SignedJwt) -> PendingSignature {
    PendingSignature {
        ev,
        jwt: jwt.clone(),
        signed: Signed::WorkloadProof,
    }
}

impl PendingSignature {
    /// Whether this is a WIMSE credential's signature (a WIT or a WPT) rather than the Txn-Token's. Hosts
    /// whose own verifier checked the Txn-Token (`host_verified`) must still check these.
    pub fn is_workload_proof(&self) -> bool {
        matches!(self.signed, Signed::WorkloadProof)
    }
}
