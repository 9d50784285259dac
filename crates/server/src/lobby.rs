//! The visit around the media: who is in each room (with the names and roles
//! their tokens carry), who waits to be admitted, and whether a clinician
//! ended the visit. Above the SFU, which knows only participant ids and
//! tracks: the roster is fed by the media thread's join and leave events, the
//! waiting room and the end by signaling. Each room has a broadcast channel
//! its signaling connections listen on.

use continuum_core::Role;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::broadcast;

pub use continuum_core::RoomKey;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Member {
    pub participant: String,
    pub identity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: Role,
    /// What this participant muted (as it told the room), so a newcomer's
    /// roster shows it without waiting for the next change.
    pub muted: Muted,
    /// On a phone call bridged into the room (pages show a phone badge).
    pub phone: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Muted {
    pub audio: bool,
    pub video: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Waiter {
    /// Names this wait (`w…`): what `admit` takes.
    pub ticket: String,
    pub identity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Unix seconds since the patient started waiting.
    pub since: u64,
}

/// What a room's signaling connections hear.
#[derive(Debug, Clone)]
pub enum LobbyNotice {
    Joined(Member),
    Left {
        participant: String,
    },
    /// The waiting list changed (the whole list: it is short).
    Waiting(Vec<Waiter>),
    /// This waiter may join now.
    Admitted {
        ticket: String,
        by: String,
    },
    /// The visit was ended for everyone.
    Ended {
        by: String,
    },
    /// The patient's video failed and Continuum is calling their phone
    /// (PSTN fallback): staff get the conversation's context with it.
    MovedToPhone(std::sync::Arc<serde_json::Value>),
    /// Not sent: what a connection that fell behind gets instead of the
    /// notices it missed (it resends the whole roster).
    Resync,
}

#[derive(Default)]
struct RoomState {
    members: BTreeMap<String, Member>,
    /// What each participant muted, kept apart from `members`: a mute can
    /// arrive (over signaling) before the media thread's join reaches us.
    mutes: HashMap<String, Muted>,
    waiting: Vec<Waiter>,
    /// Identities admitted once: they come back in without waiting again
    /// (a reload, a rejoin after leaving) while the visit is open.
    admitted: HashSet<String>,
    ended: bool,
    notices: Option<broadcast::Sender<LobbyNotice>>,
}

impl RoomState {
    fn notices(&mut self) -> &broadcast::Sender<LobbyNotice> {
        self.notices.get_or_insert_with(|| broadcast::channel(64).0)
    }

    fn idle(&self) -> bool {
        self.members.is_empty()
            && self.waiting.is_empty()
            && self
                .notices
                .as_ref()
                .is_none_or(|n| n.receiver_count() == 0)
    }
}

/// Shared by the signaling connections and the media event recorder.
#[derive(Clone, Default)]
pub struct Lobby {
    rooms: Arc<Mutex<HashMap<RoomKey, RoomState>>>,
    next_ticket: Arc<std::sync::atomic::AtomicU64>,
}

impl Lobby {
    /// Listen to a room's notices (`snapshot` tells what is there now).
    pub fn subscribe(&self, key: &RoomKey) -> broadcast::Receiver<LobbyNotice> {
        let mut rooms = self.rooms.lock();
        rooms.entry(key.clone()).or_default().notices().subscribe()
    }

    /// The room's members and waiters now.
    pub fn snapshot(&self, key: &RoomKey) -> (Vec<Member>, Vec<Waiter>) {
        self.rooms
            .lock()
            .get(key)
            .map_or_else(Default::default, |r| {
                (r.members.values().cloned().collect(), r.waiting.clone())
            })
    }

    pub fn members(&self, key: &RoomKey) -> Vec<Member> {
        self.rooms
            .lock()
            .get(key)
            .map(|r| r.members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Rooms with members and their participants, per tenant.
    pub fn tenant_counts(&self) -> HashMap<String, (usize, usize)> {
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        for (key, room) in self.rooms.lock().iter() {
            if !room.members.is_empty() {
                let c = counts.entry(key.tenant_id.clone()).or_default();
                c.0 += 1;
                c.1 += room.members.len();
            }
        }
        counts
    }

    /// The media thread seated `member`.
    pub fn joined(&self, key: &RoomKey, mut member: Member) {
        let mut rooms = self.rooms.lock();
        let room = rooms.entry(key.clone()).or_default();
        if let Some(m) = room.mutes.get(&member.participant) {
            member.muted = *m;
        }
        room.admitted.insert(member.identity.clone());
        room.members
            .insert(member.participant.clone(), member.clone());
        let _ = room.notices().send(LobbyNotice::Joined(member));
    }

    /// `participant` muted or unmuted its `kind` ("audio" or "video"). The
    /// media thread tells the others; this keeps it for later arrivals.
    pub fn set_muted(&self, key: &RoomKey, participant: &str, kind: &str, muted: bool) {
        let mut rooms = self.rooms.lock();
        let room = rooms.entry(key.clone()).or_default();
        let state = room.mutes.entry(participant.to_owned()).or_default();
        match kind {
            "audio" => state.audio = muted,
            "video" => state.video = muted,
            _ => return,
        }
        let state = *state;
        if let Some(m) = room.members.get_mut(participant) {
            m.muted = state;
        }
    }

    /// The media thread let `participant` go.
    pub fn left(&self, key: &RoomKey, participant: &str) {
        let mut rooms = self.rooms.lock();
        let Some(room) = rooms.get_mut(key) else {
            return;
        };
        room.mutes.remove(participant);
        if room.members.remove(participant).is_some() {
            let _ = room.notices().send(LobbyNotice::Left {
                participant: participant.to_owned(),
            });
        }
        if room.idle() {
            rooms.remove(key);
        }
    }

    /// Whether `identity` must wait for a clinician: the room has a waiting
    /// room, and this identity was not admitted before.
    pub fn must_wait(&self, key: &RoomKey, identity: &str) -> bool {
        !self
            .rooms
            .lock()
            .get(key)
            .is_some_and(|r| r.admitted.contains(identity))
    }

    /// Puts a patient in the waiting room; returns its ticket.
    pub fn wait(&self, key: &RoomKey, identity: &str, name: Option<String>) -> String {
        let n = self
            .next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ticket = format!("w{}", n + 1);
        let mut rooms = self.rooms.lock();
        let room = rooms.entry(key.clone()).or_default();
        room.waiting.push(Waiter {
            ticket: ticket.clone(),
            identity: identity.to_owned(),
            name,
            since: continuum_core::clock::unix_secs(),
        });
        let list = room.waiting.clone();
        let _ = room.notices().send(LobbyNotice::Waiting(list));
        ticket
    }

    /// The waiter gave up (closed the page, left).
    pub fn stop_waiting(&self, key: &RoomKey, ticket: &str) {
        let mut rooms = self.rooms.lock();
        let Some(room) = rooms.get_mut(key) else {
            return;
        };
        let before = room.waiting.len();
        room.waiting.retain(|w| w.ticket != ticket);
        if room.waiting.len() != before {
            let list = room.waiting.clone();
            let _ = room.notices().send(LobbyNotice::Waiting(list));
        }
        if room.idle() {
            rooms.remove(key);
        }
    }

    /// Admits a waiter; returns who it was, or `None` for an unknown ticket.
    pub fn admit(&self, key: &RoomKey, ticket: &str, by: &str) -> Option<Waiter> {
        let mut rooms = self.rooms.lock();
        let room = rooms.get_mut(key)?;
        let at = room.waiting.iter().position(|w| w.ticket == ticket)?;
        let waiter = room.waiting.remove(at);
        room.admitted.insert(waiter.identity.clone());
        let list = room.waiting.clone();
        let notices = room.notices();
        let _ = notices.send(LobbyNotice::Admitted {
            ticket: ticket.to_owned(),
            by: by.to_owned(),
        });
        let _ = notices.send(LobbyNotice::Waiting(list));
        Some(waiter)
    }

    /// Ends the visit: every connection of the room is told, waiters included.
    pub fn end(&self, key: &RoomKey, by: &str) {
        let mut rooms = self.rooms.lock();
        let room = rooms.entry(key.clone()).or_default();
        room.ended = true;
        room.waiting.clear();
        let _ = room
            .notices()
            .send(LobbyNotice::Ended { by: by.to_owned() });
    }

    /// Tells everyone listening to the room (handlers pick who hears it).
    pub fn announce(&self, key: &RoomKey, notice: LobbyNotice) {
        if let Some(room) = self.rooms.lock().get_mut(key) {
            let _ = room.notices().send(notice);
        }
    }

    /// Whether the room was ended while this process knew it (the store's
    /// `ended_at` is the durable answer).
    pub fn ended(&self, key: &RoomKey) -> bool {
        self.rooms.lock().get(key).is_some_and(|r| r.ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RoomKey {
        RoomKey::new("t", "r")
    }

    fn member(p: &str, who: &str, role: Role) -> Member {
        Member {
            participant: p.into(),
            identity: who.into(),
            name: None,
            role,
            muted: Muted::default(),
            phone: false,
        }
    }

    #[test]
    fn admitted_identities_come_back_without_waiting() {
        let lobby = Lobby::default();
        let mut rx = lobby.subscribe(&key());
        assert!(lobby.must_wait(&key(), "pat"));
        let ticket = lobby.wait(&key(), "pat", Some("Ana".into()));
        assert!(matches!(rx.try_recv(), Ok(LobbyNotice::Waiting(w)) if w.len() == 1));
        assert!(lobby.admit(&key(), "w-unknown", "dr").is_none());
        let w = lobby.admit(&key(), &ticket, "dr").unwrap();
        assert_eq!(w.identity, "pat");
        assert!(
            matches!(rx.try_recv(), Ok(LobbyNotice::Admitted { ticket: t, .. }) if t == ticket)
        );
        assert!(matches!(rx.try_recv(), Ok(LobbyNotice::Waiting(w)) if w.is_empty()));
        assert!(!lobby.must_wait(&key(), "pat"));
        assert!(
            lobby.admit(&key(), &ticket, "dr").is_none(),
            "a ticket admits once"
        );
    }

    #[test]
    fn the_roster_follows_joins_and_leaves_and_empty_rooms_are_forgotten() {
        let lobby = Lobby::default();
        lobby.joined(&key(), member("p1", "dr", Role::Clinician));
        lobby.joined(&key(), member("p2", "pat", Role::Patient));
        assert_eq!(lobby.members(&key()).len(), 2);
        lobby.set_muted(&key(), "p2", "video", true);
        // A mute that arrives before the join is not lost.
        lobby.set_muted(&key(), "p9", "audio", true);
        lobby.joined(&key(), member("p9", "late", Role::Clinician));
        let p9 = lobby
            .members(&key())
            .into_iter()
            .find(|m| m.participant == "p9");
        assert!(p9.unwrap().muted.audio);
        lobby.left(&key(), "p9");
        let p2 = lobby
            .members(&key())
            .into_iter()
            .find(|m| m.participant == "p2");
        assert_eq!(
            p2.unwrap().muted,
            Muted {
                audio: false,
                video: true
            }
        );
        lobby.left(&key(), "p1");
        lobby.left(&key(), "p2");
        assert!(lobby.rooms.lock().is_empty());
        // Joining seats count as admitted: a reload does not wait again.
        lobby.joined(&key(), member("p3", "pat", Role::Patient));
        assert!(!lobby.must_wait(&key(), "pat"));
    }

    #[test]
    fn ending_tells_everyone_and_empties_the_waiting_room() {
        let lobby = Lobby::default();
        let mut rx = lobby.subscribe(&key());
        lobby.wait(&key(), "pat", None);
        let _ = rx.try_recv();
        lobby.end(&key(), "dr");
        assert!(matches!(rx.try_recv(), Ok(LobbyNotice::Ended { by }) if by == "dr"));
        assert!(lobby.ended(&key()));
        assert!(lobby.snapshot(&key()).1.is_empty());
    }
}
