//! Just enough STUN to demultiplex: the local ICE ufrag from a Binding
//! request's USERNAME (`<our ufrag>:<their ufrag>`). Everything else is left
//! to str0m once the datagram has found its participant.

/// The recipient's ufrag (before the colon) of a STUN message's USERNAME.
pub fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    // RFC 8489 header: type (2), length (2), magic cookie (4), transaction id (12).
    if datagram.len() < 20 || datagram[0] & 0xc0 != 0 || datagram[4..8] != [0x21, 0x12, 0xa4, 0x42]
    {
        return None;
    }
    let len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let body = datagram.get(20..20 + len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let alen = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let value = body.get(at + 4..at + 4 + alen)?;
        if kind == 0x0006 {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_with_username(u: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(u.len() as u16).to_be_bytes());
        attr.extend_from_slice(u.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn finds_the_local_ufrag() {
        assert_eq!(
            local_ufrag(&binding_with_username("abcd:wxyz")),
            Some("abcd")
        );
    }

    #[test]
    fn ignores_non_stun_and_truncated_input() {
        assert_eq!(local_ufrag(&[0x80; 40]), None, "RTP");
        assert_eq!(local_ufrag(&[22; 40]), None, "DTLS");
        let msg = binding_with_username("abcd:wxyz");
        for n in 0..msg.len() {
            let _ = local_ufrag(&msg[..n]);
        }
        let mut lying = msg.clone();
        lying[3] = 0xff; // claims a longer body than it has
        assert_eq!(local_ufrag(&lying), None);
    }
}
