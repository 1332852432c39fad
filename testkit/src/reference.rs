//! Straightforward statements of the request-path parsers' rules (split, parse, compare). The fast
//! parsers are hand-rolled single passes; they must agree with these on every input. Shared by the
//! property tests (`tests/robustness.rs`) and the fuzz targets (`fuzz/fuzz_targets/{host,spiffe}.rs`),
//! so both check against the same rules.

/// A DNS name without trailing dot: labels of 1–63 `[A-Za-z0-9_-]`, not starting or ending with `-`,
/// at most 253 bytes, the last label not a number.
pub fn reference_dns_name(name: &str) -> bool {
    let labels_ok = name.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last_label = name.rsplit('.').next().unwrap_or_default();
    !name.is_empty() && name.len() <= 253 && labels_ok && !reference_is_number(last_label)
}

/// WHATWG's "ends in a number" test for one label: all decimal digits, or `0x`/`0X` and hex digits.
pub fn reference_is_number(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// `inet_aton` as its manual page states it: one to four parts separated by dots, each decimal,
/// octal (leading `0`) or hex (leading `0x`/`0X`); every part but the last is one byte and the last
/// fills the bytes left; anything out of range fails. A single trailing dot (DNS's root) is dropped.
pub fn reference_inet_aton(raw: &str) -> Option<std::net::Ipv4Addr> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::new();
    for part in &parts {
        let (digits, radix) = if let Some(hex) = part.strip_prefix("0x").or(part.strip_prefix("0X"))
        {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (*part, 10)
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        // Leading zeros cannot overflow; the value can.
        let value = u64::from_str_radix(digits.trim_start_matches('0'), radix).unwrap_or(0);
        if digits.trim_start_matches('0').len() > 16 || value > u64::from(u32::MAX) {
            return None;
        }
        values.push(value);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|&v| v > 255) || *last >= 1_u64 << (8 * (4 - leading.len())) {
        return None;
    }
    let address = leading
        .iter()
        .enumerate()
        .fold(*last, |acc, (i, &v)| acc | (v << (24 - 8 * i)));
    Some(std::net::Ipv4Addr::from(u32::try_from(address).ok()?))
}

/// A host as the request path must see it: an IPv6 literal (bracketed or not) in canonical form, an
/// IPv4-mapped one as its IPv4 address; a host ending in a number as the `inet_aton` address or
/// nothing; else a DNS name, lower-cased, one trailing dot dropped.
pub fn reference_normalize_host(raw: &str) -> Option<String> {
    use std::net::Ipv6Addr;
    let canonical = |v6: Ipv6Addr| {
        v6.to_ipv4_mapped()
            .map_or_else(|| v6.to_string(), |v4| v4.to_string())
    };
    if let Some(inner) = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(canonical);
    }
    if let Ok(ip) = raw.parse::<Ipv6Addr>() {
        return Some(canonical(ip));
    }
    let name = raw.strip_suffix('.').unwrap_or(raw);
    let last_label = name.rsplit('.').next().unwrap_or_default();
    if reference_is_number(last_label) {
        // Names over DNS's limits are refused before the numbers are read.
        let within_limits = name.len() <= 253 && name.split('.').all(|label| label.len() <= 63);
        return reference_inet_aton(raw)
            .filter(|_| within_limits)
            .map(|ip| ip.to_string());
    }
    reference_dns_name(name).then(|| name.to_ascii_lowercase())
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>`, Istio's shape, under SPIFFE's rules: a trust domain of 1–255
/// lower-case letters, digits, `.`, `-`, `_`; path segments of `[A-Za-z0-9._-]`, not empty, `.` or `..`.
pub fn reference_spiffe(id: &str) -> Option<(String, String, String)> {
    let segments: Vec<&str> = id.strip_prefix("spiffe://")?.split('/').collect();
    let [td, "ns", ns, "sa", sa] = segments[..] else {
        return None;
    };
    let td_ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b));
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
    };
    (td_ok && segment_ok(ns) && segment_ok(sa)).then(|| (td.into(), ns.into(), sa.into()))
}
