//! The IVR host: runs `continuum-ivr` sessions on live calls (prompts
//! played through the voice gateway, digits fed back, webhooks fetched and
//! signed, voicemails stored as attachments, calls handed to the queues).

pub mod prompts;
