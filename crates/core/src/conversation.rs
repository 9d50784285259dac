//! Conversation lifecycle: `open → queued → active → closed`, reopening on new
//! inbound contact. The engine calls [`ConversationState::apply`] before every
//! state change so invalid transitions never reach the store.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConversationState {
    /// Created, nobody is handling it yet.
    Open,
    /// Waiting in a queue for a clinician or agent.
    Queued,
    /// Someone is assigned and working on it.
    Active,
    /// Done; new inbound contact reopens it.
    Closed,
}

/// Things that can happen to a conversation's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Put into a queue (routing, IVR).
    Enqueue,
    /// Assign to staff; makes it active.
    Assign,
    Close,
    /// Explicit reopen, or new inbound contact on a closed conversation.
    Reopen,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Enqueue => "queue",
            Transition::Assign => "assign",
            Transition::Close => "close",
            Transition::Reopen => "reopen",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a conversation that is {from}{hint}", action = .transition.as_str(), hint = hint(*.from, *.transition))]
pub struct TransitionError {
    pub from: ConversationState,
    pub transition: Transition,
}

fn hint(from: ConversationState, t: Transition) -> &'static str {
    match (from, t) {
        (ConversationState::Closed, _) => "; reopen it first",
        (_, Transition::Reopen) => "; only closed conversations can be reopened",
        (ConversationState::Active, Transition::Enqueue) => {
            "; it is already assigned (assign it to someone else instead)"
        }
        _ => "",
    }
}

impl ConversationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationState::Open => "open",
            ConversationState::Queued => "queued",
            ConversationState::Active => "active",
            ConversationState::Closed => "closed",
        }
    }

    /// The state after `t`, or why `t` is not allowed from here.
    pub fn apply(self, t: Transition) -> Result<ConversationState, TransitionError> {
        use ConversationState::*;
        use Transition::*;
        let next = match (self, t) {
            (Open | Queued, Enqueue) => Queued,
            (Open | Queued | Active, Assign) => Active,
            (Open | Queued | Active, Close) => Closed,
            (Closed, Reopen) => Open,
            (from, transition) => return Err(TransitionError { from, transition }),
        };
        Ok(next)
    }
}

impl fmt::Display for ConversationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConversationState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(ConversationState::Open),
            "queued" => Ok(ConversationState::Queued),
            "active" => Ok(ConversationState::Active),
            "closed" => Ok(ConversationState::Closed),
            other => Err(format!(
                "unknown conversation state `{other}`; expected open, queued, active or closed"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConversationState::*;
    use super::Transition::*;

    #[test]
    fn the_happy_path() {
        let s = Open.apply(Enqueue).unwrap();
        let s = s.apply(Assign).unwrap();
        assert_eq!(s, Active);
        let s = s.apply(Close).unwrap();
        assert_eq!(s.apply(Reopen).unwrap(), Open);
    }

    #[test]
    fn invalid_transitions_explain_themselves() {
        let err = Closed.apply(Assign).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot assign a conversation that is closed; reopen it first"
        );
        let err = Active.apply(Enqueue).unwrap_err();
        assert!(err.to_string().contains("already assigned"));
        assert!(Open.apply(Reopen).is_err());
        assert!(Closed.apply(Close).is_err());
    }

    #[test]
    fn closed_is_only_left_by_reopening() {
        for t in [Enqueue, Assign, Close] {
            assert!(Closed.apply(t).is_err());
        }
    }
}
