//! Parsers for the small languages inside config strings: names, Modbus addresses, broker
//! URLs and `HH:MM` times. Each returns a [`Problem`] (message + optional hint) that the caller
//! places at the value's position.

use super::super::{ModbusAddress, MqttUrl};

/// Why a string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    fn new(message: impl Into<String>) -> Self {
        Problem {
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A name that appears in MQTT topics: `[A-Za-z0-9_-]{1,64}`, plus `.` when `allow_dot`.
pub(super) fn check_name(s: &str, allow_dot: bool) -> Result<(), Problem> {
    let ok_char =
        |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (allow_dot && c == '.');
    let allowed = if allow_dot {
        "A-Z a-z 0-9 . _ -"
    } else {
        "A-Z a-z 0-9 _ -"
    };
    let len = s.chars().count();
    if (1..=64).contains(&len) && s.chars().all(ok_char) {
        return Ok(());
    }
    let p = Problem::new(format!(
        "invalid name \"{s}\": use 1 to 64 characters of {allowed}"
    ));
    Err(if s.contains(['/', '+', '#']) {
        p.hint("\"/\", \"+\" and \"#\" are MQTT topic separators and wildcards")
    } else if s.contains(char::is_whitespace) {
        p.hint("spaces are not allowed; use \"_\" or \"-\"")
    } else {
        p
    })
}

/// `co:N di:N ir:N hr:N hr:N.B ir:N.B`, zero-based, table prefix case-insensitive.
pub(super) fn parse_modbus_address(s: &str) -> Result<ModbusAddress, Problem> {
    let bad = |why: &str| Problem::new(format!("invalid Modbus address \"{s}\": {why}"));
    let tables =
        "use co:N (coil), di:N (discrete input), ir:N (input register) or hr:N (holding register)";
    let Some((table, rest)) = s.trim().split_once(':') else {
        let p = bad("missing the table prefix");
        return Err(match legacy_address_hint(s.trim()) {
            Some(h) => p.hint(h),
            None => p.hint(tables),
        });
    };
    let table = table.to_ascii_lowercase();
    let (number, bit) = match rest.split_once('.') {
        Some((n, b)) => (n, Some(b)),
        None => (rest, None),
    };
    let n: u16 = match number.parse::<u32>() {
        Ok(n) if n <= 65535 => n as u16,
        Ok(_) => return Err(bad("the address must be 0..=65535")),
        Err(_) => {
            return Err(bad("the address must be a number")
                .hint("e.g. \"hr:100\" or \"hr:100.3\" for bit 3"))
        }
    };
    let bit = match bit {
        None => None,
        Some(b) => match b.parse::<u8>() {
            Ok(b) if b <= 15 => Some(b),
            _ => return Err(bad("the bit must be 0..=15")),
        },
    };
    match (table.as_str(), bit) {
        ("co", None) => Ok(ModbusAddress::Coil(n)),
        ("di", None) => Ok(ModbusAddress::DiscreteInput(n)),
        ("ir", None) => Ok(ModbusAddress::InputRegister(n)),
        ("hr", None) => Ok(ModbusAddress::HoldingRegister(n)),
        ("hr", Some(b)) => Ok(ModbusAddress::HoldingRegisterBit(n, b)),
        ("ir", Some(b)) => Ok(ModbusAddress::InputRegisterBit(n, b)),
        ("co" | "di", Some(_)) => Err(bad("coils and discrete inputs are single bits already")),
        _ => Err(bad(&format!("unknown table \"{table}\"")).hint(tables)),
    }
}

/// `40101` (1-based Modicon numbering) → a hint naming the zero-based address.
fn legacy_address_hint(s: &str) -> Option<String> {
    if !(5..=6).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (kind, rest) = s.split_at(1);
    let n: u32 = rest.parse().ok()?;
    let table = match kind {
        "0" => "co",
        "1" => "di",
        "3" => "ir",
        "4" => "hr",
        _ => return None,
    };
    if n == 0 || n > 65536 {
        return None;
    }
    Some(format!(
        "addresses are zero-based with a table prefix: {s} in 1-based Modicon numbering is \"{table}:{}\"",
        n - 1
    ))
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`; IPv6 hosts in brackets.
pub(super) fn parse_mqtt_url(s: &str) -> Result<MqttUrl, Problem> {
    let shape = "expected mqtt://host[:port] or mqtts://host[:port]";
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(Problem::new(format!("{shape}, found \"{s}\""))
            .hint("start with mqtt:// (plain TCP, port 1883) or mqtts:// (TLS, port 8883)"));
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" => false,
        "mqtts" => true,
        "tcp" => {
            return Err(Problem::new(format!("unsupported scheme \"{scheme}\""))
                .hint("use mqtt:// for plain TCP"))
        }
        "ssl" | "tls" => {
            return Err(Problem::new(format!("unsupported scheme \"{scheme}\""))
                .hint("use mqtts:// for TLS"))
        }
        _ => {
            return Err(Problem::new(format!("unsupported scheme \"{scheme}\""))
                .hint("use mqtt:// (plain TCP) or mqtts:// (TLS)"))
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(Problem::new(format!("{shape}, found \"{s}\"")).hint(
            "put the user name in `username` and the password in the file named by `password_file`",
        ));
    }
    if rest.contains(['/', '?', '#']) || rest.contains(char::is_whitespace) {
        return Err(Problem::new(format!(
            "{shape} (no path or query), found \"{s}\""
        )));
    }
    let (host, port) = if let Some(after) = rest.strip_prefix('[') {
        let Some((host, tail)) = after.split_once(']') else {
            return Err(Problem::new(format!("unclosed \"[\" in \"{s}\"")));
        };
        match tail {
            "" => (host, None),
            _ => match tail.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err(Problem::new(format!("{shape}, found \"{s}\""))),
            },
        }
    } else {
        match rest.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(Problem::new(format!("{shape}, found \"{s}\""))
                    .hint("write IPv6 addresses in brackets: mqtt://[::1]:1883"))
            }
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(Problem::new(format!("missing host in \"{s}\"")));
    }
    let port = match port {
        None if tls => 8883,
        None => 1883,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p >= 1 => p,
            _ => {
                return Err(Problem::new(format!(
                    "invalid port \"{p}\" in \"{s}\": must be 1..=65535"
                )))
            }
        },
    };
    Ok(MqttUrl {
        tls,
        host: host.to_string(),
        port,
    })
}

/// `HH:MM` (24 h, `H:MM` accepted) → minutes after midnight.
pub(super) fn parse_hhmm(s: &str) -> Result<u32, Problem> {
    let p = || {
        Problem::new(format!(
            "expected a time \"HH:MM\" (24-hour), found \"{s}\""
        ))
        .hint("e.g. \"06:00\" or \"22:30\"")
    };
    let (h, m) = s.split_once(':').ok_or_else(p)?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || h.len() > 2 || !digits(m) || m.len() != 2 {
        return Err(p());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| p())?, m.parse().map_err(|_| p())?);
    if h > 23 || m > 59 {
        return Err(Problem::new(format!(
            "\"{s}\" is not a time of day: hours 00..=23, minutes 00..=59"
        )));
    }
    Ok(h * 60 + m)
}

/// `06:00` for messages.
pub(super) fn fmt_hhmm(min: u32) -> String {
    format!("{:02}:{:02}", min / 60, min % 60)
}

/// A Logix tag: `Name`, `Program:Main.Name`, `Name.Member[3]`, letters, digits, `_ . : [ ] ,`.
pub(super) fn check_tag(s: &str) -> Result<(), Problem> {
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let all_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.:[],".contains(c));
    if first_ok && all_ok && s.len() <= 255 {
        Ok(())
    } else {
        Err(Problem::new(format!("invalid Logix tag \"{s}\""))
            .hint("tags start with a letter or \"_\" and use letters, digits, \"_\", \".\", \"[i]\"; program tags as \"Program:Main.Count\""))
    }
}

/// Checks the elements a Logix signal reads, mirroring `acquire::eip::Access::of`: a `bool`
/// tag ending in `.N` reads bits `N .. N + count` of a word (at most 64 bits); any other tag
/// with `count` > 1 reads `Base[i]` … `Base[i + count - 1]` from the one index the tag names
/// (0 without one), and every index must fit a `u32` (no wrap-around, no panic in the driver).
///
/// On failure returns the key to point at (`"tag"` or `"count"`) and the problem.
pub(super) fn check_tag_elements(
    tag: &str,
    is_bool: bool,
    count: u16,
) -> Result<(), (&'static str, Problem)> {
    if is_bool {
        if let Some((word, bit)) = tag.rsplit_once('.') {
            if !bit.is_empty() && bit.bytes().all(|b| b.is_ascii_digit()) {
                let end = bit
                    .parse::<u32>()
                    .ok()
                    .and_then(|b| b.checked_add(u32::from(count.max(1))));
                return match end {
                    Some(end) if end <= 64 => Ok(()),
                    _ => Err((
                        if count > 1 { "count" } else { "tag" },
                        Problem::new(format!(
                            "{} bit(s) from bit {bit} of \"{word}\" run past bit 63: Logix words have at most 64 bits",
                            count.max(1)
                        )),
                    )),
                };
            }
        }
    }
    if count <= 1 {
        return Ok(());
    }
    let Some((base, index)) = tag.strip_suffix(']').and_then(|t| t.rsplit_once('[')) else {
        return Ok(());
    };
    let Ok(first) = index.parse::<u32>() else {
        return Err((
            "tag",
            Problem::new(format!(
                "\"{tag}\": an array signal names its first element with one index from 0 to {}",
                u32::MAX
            ))
            .hint("write it like \"Faults[0]\"; count gives the number of elements"),
        ));
    };
    match first.checked_add(u32::from(count) - 1) {
        Some(_) => Ok(()),
        None => Err((
            "count",
            Problem::new(format!(
                "{count} elements from {base}[{first}] run past the largest array index {}",
                u32::MAX
            )),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ModbusAddress::*;

    #[test]
    fn array_tags_whose_last_element_overflows_an_index_are_refused() {
        assert!(check_tag_elements("Arr[4294967290]", false, 6).is_ok());
        let (key, p) = check_tag_elements("Arr[4294967290]", false, 10).unwrap_err();
        assert_eq!(key, "count");
        assert!(
            p.message.contains("run past the largest array index"),
            "{p:?}"
        );
        let (key, _) = check_tag_elements("Arr[99999999999]", false, 2).unwrap_err();
        assert_eq!(key, "tag");
        assert!(check_tag_elements("M[1,2]", false, 2).is_err());
        assert!(
            check_tag_elements("M[1,2]", false, 1).is_ok(),
            "a scalar tag is the PLC's business"
        );
        assert!(check_tag_elements("Faults", false, 2000).is_ok());
    }

    #[test]
    fn bit_ranges_past_bit_63_are_refused() {
        assert!(check_tag_elements("W.60", true, 4).is_ok());
        assert_eq!(check_tag_elements("W.60", true, 5).unwrap_err().0, "count");
        assert_eq!(
            check_tag_elements("W.99999999999", true, 1).unwrap_err().0,
            "tag"
        );
        assert!(
            check_tag_elements("W.5", false, 1).is_ok(),
            "not a bit access when not bool"
        );
    }

    #[test]
    fn modbus_addresses_parse_every_table_and_bit_form() {
        assert_eq!(parse_modbus_address("co:0"), Ok(Coil(0)));
        assert_eq!(parse_modbus_address("di:7"), Ok(DiscreteInput(7)));
        assert_eq!(parse_modbus_address("ir:10"), Ok(InputRegister(10)));
        assert_eq!(parse_modbus_address("hr:65535"), Ok(HoldingRegister(65535)));
        assert_eq!(
            parse_modbus_address("HR:100.15"),
            Ok(HoldingRegisterBit(100, 15))
        );
        assert_eq!(parse_modbus_address("ir:3.2"), Ok(InputRegisterBit(3, 2)));
    }

    #[test]
    fn modbus_addresses_out_of_range_or_malformed_are_refused() {
        for bad in [
            "hr:65536", "hr:1.16", "co:1.2", "xx:1", "hr:", "hr:-1", "hr:1.x", "",
        ] {
            assert!(parse_modbus_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_modicon_address_gets_a_zero_based_hint() {
        let e = parse_modbus_address("40101").unwrap_err();
        assert!(e.hint.unwrap().contains("\"hr:100\""));
        let e = parse_modbus_address("30011").unwrap_err();
        assert!(e.hint.unwrap().contains("\"ir:10\""));
    }

    #[test]
    fn mqtt_urls_default_the_port_by_scheme() {
        let u = parse_mqtt_url("mqtt://127.0.0.1").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 1883));
        let u = parse_mqtt_url("mqtts://broker.plant.local").unwrap();
        assert_eq!((u.tls, u.port), (true, 8883));
        let u = parse_mqtt_url("mqtts://[::1]:9883/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9883));
    }

    #[test]
    fn mqtt_urls_with_other_schemes_paths_or_credentials_are_refused() {
        for bad in [
            "tcp://h:1883",
            "broker:1883",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:p@h",
            "mqtt://h/x",
            "mqtt://::1",
        ] {
            assert!(parse_mqtt_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_hh_mm_in_24_hours() {
        assert_eq!(parse_hhmm("06:00"), Ok(360));
        assert_eq!(parse_hhmm("6:30"), Ok(390));
        assert_eq!(parse_hhmm("23:59"), Ok(1439));
        for bad in ["24:00", "12:60", "12", "12:5", "ab:cd", "12:00:00"] {
            assert!(parse_hhmm(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_refuse_topic_wildcards() {
        assert!(check_name("BP01.PACK.BAG1", true).is_ok());
        assert!(check_name("BP01.PACK.BAG1", false).is_err());
        let e = check_name("a/b", true).unwrap_err();
        assert!(e.hint.unwrap().contains("wildcards"));
        assert!(check_name("", true).is_err());
        assert!(check_name(&"x".repeat(65), true).is_err());
    }

    #[test]
    fn logix_tags_allow_programs_members_and_elements() {
        assert!(check_tag("Program:Main.Count").is_ok());
        assert!(check_tag("BasketLoader.Faults[1]").is_ok());
        assert!(check_tag("1abc").is_err());
        assert!(check_tag("has space").is_err());
    }
}
