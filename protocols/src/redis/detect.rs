//! Recognising Redis from a connection's first bytes. A RESP command array naming a known command is
//! unmistakable; on the Redis port (6379) inline commands and replies are accepted too.
use super::commands;
use crate::Direction;

const REDIS_PORT: u16 = 6379;

pub fn detect(_dir: Direction, data: &[u8], remote_port: u16) -> bool {
    command_array(data) || (remote_port == REDIS_PORT && (inline_command(data) || reply(data)))
}

/// `*<n>\r\n$<len>\r\n<known command>`; a prefix of that is enough when the read ended early.
fn command_array(data: &[u8]) -> bool {
    let Some(rest) = data.strip_prefix(b"*") else {
        return false;
    };
    let Some(rest) = digits_crlf(rest) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix(b"$") else {
        return false;
    };
    let Some((len, rest)) = length_crlf(rest) else {
        return rest.iter().all(u8::is_ascii_digit) || rest.ends_with(b"\r");
    };
    if rest.len() < len {
        return rest.iter().all(u8::is_ascii_alphabetic);
    }
    std::str::from_utf8(&rest[..len]).is_ok_and(|name| commands::known(name).is_some())
}

fn digits_crlf(data: &[u8]) -> Option<&[u8]> {
    length_crlf(data).map(|(_, rest)| rest)
}

fn length_crlf(data: &[u8]) -> Option<(usize, &[u8])> {
    let end = data.iter().position(|b| !b.is_ascii_digit())?;
    if end == 0 || end > 9 || !data[end..].starts_with(b"\r\n") {
        return None;
    }
    let len = std::str::from_utf8(&data[..end]).ok()?.parse().ok()?;
    Some((len, &data[end + 2..]))
}

fn inline_command(data: &[u8]) -> bool {
    let word_end = data
        .iter()
        .position(|b| *b == b' ' || *b == b'\r' || *b == b'\n')
        .unwrap_or(data.len());
    word_end < data.len()
        && std::str::from_utf8(&data[..word_end]).is_ok_and(|w| commands::known(w).is_some())
}

fn reply(data: &[u8]) -> bool {
    data.len() >= 3 && b"+-:$*_%~>".contains(&data[0]) && data.windows(2).any(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_array_is_detected_on_any_port() {
        assert!(detect(Direction::Egress, b"*1\r\n$4\r\nPING\r\n", 1234));
        assert!(detect(
            Direction::Egress,
            b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n",
            1234
        ));
        assert!(detect(Direction::Egress, b"*2\r\n$3\r\nGE", 1234));
    }

    #[test]
    fn an_unknown_command_or_other_protocol_is_not_redis() {
        assert!(!detect(Direction::Egress, b"*1\r\n$5\r\nHELLX\r\n", 1234));
        assert!(!detect(Direction::Egress, b"GET / HTTP/1.1\r\n", 6380));
        assert!(!detect(Direction::Egress, b"+OK\r\n", 1234));
    }

    #[test]
    fn inline_commands_and_replies_need_the_redis_port() {
        assert!(detect(Direction::Egress, b"PING\r\n", 6379));
        assert!(!detect(Direction::Egress, b"PING\r\n", 7000));
        assert!(detect(Direction::Ingress, b"+PONG\r\n", 6379));
    }
}
