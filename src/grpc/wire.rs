//! Reads the few fields of an Envoy `CheckRequest` that the policy uses straight from the protobuf wire
//! bytes, borrowing them, instead of decoding the whole message.
//!
//! Why not the generated decoder: it validates every `string` field as UTF-8 and gives up on the whole
//! message if one is not, and it recurses into every nested message (metadata `Struct`s included).
//! Envoy forwards a TLS ClientHello's SNI bytes unchanged, so a client could make the decode fail, and
//! a failed decode is an RPC error that Envoy's `failure_mode_allow` turns into an allow. Here the
//! fields are bytes; the caller decides what an unreadable one means (a deny with a reason), and every
//! field the policy does not read is skipped by its length without looking inside, however deep.
//!
//! Protobuf semantics are kept where they matter: the last value of a repeated scalar field wins, an
//! embedded message given several times is merged (so its fields, too, take their last value), a later
//! member of a `oneof` replaces an earlier one, and the last entry for a map key wins.

/// Field numbers from `envoy/service/auth/v3/{external_auth,attribute_context}.proto` and
/// `envoy/config/core/v3/{address,base}.proto`.
mod field {
    pub(super) const CHECK_REQUEST_ATTRIBUTES: u32 = 1;

    pub(super) const ATTRIBUTES_SOURCE: u32 = 1;
    pub(super) const ATTRIBUTES_DESTINATION: u32 = 2;
    pub(super) const ATTRIBUTES_REQUEST: u32 = 4;
    pub(super) const ATTRIBUTES_TLS_SESSION: u32 = 12;

    pub(super) const PEER_ADDRESS: u32 = 1;
    pub(super) const PEER_SERVICE: u32 = 2;
    pub(super) const PEER_PRINCIPAL: u32 = 4;

    pub(super) const ADDRESS_SOCKET_ADDRESS: u32 = 1;
    pub(super) const ADDRESS_PIPE: u32 = 2;
    pub(super) const ADDRESS_ENVOY_INTERNAL: u32 = 3;
    pub(super) const SOCKET_ADDRESS_PORT_VALUE: u32 = 3;
    pub(super) const SOCKET_ADDRESS_NAMED_PORT: u32 = 4;

    pub(super) const REQUEST_HTTP: u32 = 2;

    pub(super) const HTTP_METHOD: u32 = 2;
    pub(super) const HTTP_HEADERS: u32 = 3;
    pub(super) const HTTP_PATH: u32 = 4;
    pub(super) const HTTP_HOST: u32 = 5;
    pub(super) const HTTP_HEADER_MAP: u32 = 13;

    pub(super) const MAP_ENTRY_KEY: u32 = 1;
    pub(super) const MAP_ENTRY_VALUE: u32 = 2;

    pub(super) const HEADER_MAP_HEADERS: u32 = 1;
    pub(super) const HEADER_VALUE_KEY: u32 = 1;
    pub(super) const HEADER_VALUE_VALUE: u32 = 2;
    pub(super) const HEADER_VALUE_RAW_VALUE: u32 = 3;

    pub(super) const TLS_SESSION_SNI: u32 = 1;
}

/// Headers the policy and the decision log read.
const AUTHORITY: &[u8] = b":authority";
const PATH: &[u8] = b":path";
const REQUEST_ID: &[u8] = b"x-request-id";

/// The fields of a check, as raw bytes borrowed from the message. Empty means absent, as in proto3.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckFields<'a> {
    /// `attributes.source.principal`.
    pub principal: &'a [u8],
    /// `attributes.destination.service`.
    pub destination_service: &'a [u8],
    /// `attributes.tls_session.sni`.
    pub sni: &'a [u8],
    /// The port of `attributes.destination.address`, when it is a socket address with a numeric port
    /// that fits in 16 bits.
    pub port: Option<u16>,
    /// `attributes.request.http`, when present: the check came from the HTTP filter.
    pub http: Option<HttpFields<'a>>,
}

/// The HTTP attributes of a check, raw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpFields<'a> {
    /// `host`, else the `:authority` header.
    pub authority: &'a [u8],
    /// `method`.
    pub method: &'a [u8],
    /// `path`, else the `:path` header.
    pub path: &'a [u8],
    /// The `x-request-id` header.
    pub request_id: &'a [u8],
}

/// Why a message could not be read: it is not a well-formed protobuf `CheckRequest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// What was wrong, for logs.
    pub what: &'static str,
    /// Whether an HTTP request had been seen before the problem, so the deny can be counted under the
    /// protocol the check appeared to be.
    pub saw_http: bool,
}

/// Reads a `CheckRequest` message (without the gRPC frame header).
pub fn read_check_request(message: &[u8]) -> Result<CheckFields<'_>, Malformed> {
    let mut check = Accumulator::default();
    match check.read(message) {
        Ok(()) => Ok(check.finish()),
        Err(what) => Err(Malformed {
            what,
            saw_http: check.http.is_some(),
        }),
    }
}

/// Which member of `Address.address` was set last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum AddressKind {
    #[default]
    Unset,
    Socket,
    Other,
}

/// Which member of `SocketAddress.port_specifier` was set last, and the value of a numeric port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum PortSpecifier {
    #[default]
    Unset,
    Value(u32),
    Named,
}

#[derive(Debug, Default)]
struct Accumulator<'a> {
    principal: &'a [u8],
    destination_service: &'a [u8],
    destination_address: AddressKind,
    destination_port: PortSpecifier,
    sni: &'a [u8],
    http: Option<HttpAccumulator<'a>>,
}

#[derive(Debug, Default)]
struct HttpAccumulator<'a> {
    host: &'a [u8],
    method: &'a [u8],
    path: &'a [u8],
    header_authority: &'a [u8],
    header_path: &'a [u8],
    header_request_id: &'a [u8],
    map_authority: &'a [u8],
    map_path: &'a [u8],
    map_request_id: &'a [u8],
}

type ReadResult = Result<(), &'static str>;

impl<'a> Accumulator<'a> {
    fn read(&mut self, message: &'a [u8]) -> ReadResult {
        let mut fields = Fields::new(message);
        while let Some((number, value)) = fields.next_field()? {
            if number == field::CHECK_REQUEST_ATTRIBUTES {
                self.read_attributes(value.message()?)?;
            }
        }
        Ok(())
    }

    fn read_attributes(&mut self, message: &'a [u8]) -> ReadResult {
        let mut fields = Fields::new(message);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                field::ATTRIBUTES_SOURCE => self.read_source(value.message()?)?,
                field::ATTRIBUTES_DESTINATION => self.read_destination(value.message()?)?,
                field::ATTRIBUTES_REQUEST => self.read_request(value.message()?)?,
                field::ATTRIBUTES_TLS_SESSION => {
                    let mut session = Fields::new(value.message()?);
                    while let Some((number, value)) = session.next_field()? {
                        if number == field::TLS_SESSION_SNI {
                            self.sni = value.bytes()?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn read_source(&mut self, message: &'a [u8]) -> ReadResult {
        let mut fields = Fields::new(message);
        while let Some((number, value)) = fields.next_field()? {
            if number == field::PEER_PRINCIPAL {
                self.principal = value.bytes()?;
            }
        }
        Ok(())
    }

    fn read_destination(&mut self, message: &'a [u8]) -> ReadResult {
        let mut fields = Fields::new(message);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                field::PEER_SERVICE => self.destination_service = value.bytes()?,
                field::PEER_ADDRESS => self.read_address(value.message()?)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn read_address(&mut self, message: &'a [u8]) -> ReadResult {
        let mut fields = Fields::new(message);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                field::ADDRESS_SOCKET_ADDRESS => {
                    // Switching the oneof to a socket address starts from an empty one.
                    if self.destination_address != AddressKind::Socket {
                        self.destination_port = PortSpecifier::Unset;
                    }
                    self.destination_address = AddressKind::Socket;
                    let mut socket = Fields::new(value.message()?);
                    while let Some((number, value)) = socket.next_field()? {
                        match number {
                            // `uint32`: protobuf truncates a wider varint to 32 bits.
                            field::SOCKET_ADDRESS_PORT_VALUE => {
                                self.destination_port =
                                    PortSpecifier::Value(value.varint()? as u32);
                            }
                            field::SOCKET_ADDRESS_NAMED_PORT => {
                                value.bytes()?;
                                self.destination_port = PortSpecifier::Named;
                            }
                            _ => {}
                        }
                    }
                }
                field::ADDRESS_PIPE | field::ADDRESS_ENVOY_INTERNAL => {
                    value.message()?;
                    self.destination_address = AddressKind::Other;
                    self.destination_port = PortSpecifier::Unset;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn read_request(&mut self, message: &'a [u8]) -> ReadResult {
        let mut fields = Fields::new(message);
        while let Some((number, value)) = fields.next_field()? {
            if number == field::REQUEST_HTTP {
                let http = self.http.get_or_insert_with(HttpAccumulator::default);
                http.read(value.message()?)?;
            }
        }
        Ok(())
    }

    fn finish(self) -> CheckFields<'a> {
        let port = match (self.destination_address, self.destination_port) {
            (AddressKind::Socket, PortSpecifier::Value(port)) => u16::try_from(port).ok(),
            _ => None,
        };
        CheckFields {
            principal: self.principal,
            destination_service: self.destination_service,
            sni: self.sni,
            port,
            http: self.http.map(HttpAccumulator::finish),
        }
    }
}

impl<'a> HttpAccumulator<'a> {
    fn read(&mut self, message: &'a [u8]) -> ReadResult {
        let mut fields = Fields::new(message);
        while let Some((number, value)) = fields.next_field()? {
            match number {
                field::HTTP_METHOD => self.method = value.bytes()?,
                field::HTTP_PATH => self.path = value.bytes()?,
                field::HTTP_HOST => self.host = value.bytes()?,
                field::HTTP_HEADERS => {
                    let (key, header) = read_map_entry(value.message()?)?;
                    if let Some(slot) = header_slot(
                        key,
                        [
                            &mut self.header_authority,
                            &mut self.header_path,
                            &mut self.header_request_id,
                        ],
                    ) {
                        *slot = header;
                    }
                }
                field::HTTP_HEADER_MAP => self.read_header_map(value.message()?)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// `header_map`, which Envoy sends instead of `headers` with `encode_raw_headers`.
    fn read_header_map(&mut self, message: &'a [u8]) -> ReadResult {
        let mut fields = Fields::new(message);
        while let Some((number, value)) = fields.next_field()? {
            if number != field::HEADER_MAP_HEADERS {
                continue;
            }
            let mut key: &[u8] = &[];
            let mut text: &[u8] = &[];
            let mut raw: &[u8] = &[];
            let mut header = Fields::new(value.message()?);
            while let Some((number, value)) = header.next_field()? {
                match number {
                    field::HEADER_VALUE_KEY => key = value.bytes()?,
                    field::HEADER_VALUE_VALUE => text = value.bytes()?,
                    field::HEADER_VALUE_RAW_VALUE => raw = value.bytes()?,
                    _ => {}
                }
            }
            // With raw headers the value travels in `raw_value`; `value` is the older spelling.
            let header = if raw.is_empty() { text } else { raw };
            if let Some(slot) = header_slot(
                key,
                [
                    &mut self.map_authority,
                    &mut self.map_path,
                    &mut self.map_request_id,
                ],
            ) {
                *slot = header;
            }
        }
        Ok(())
    }

    fn finish(self) -> HttpFields<'a> {
        let first =
            |values: [&'a [u8]; 3]| values.into_iter().find(|v| !v.is_empty()).unwrap_or(&[]);
        HttpFields {
            authority: first([self.host, self.header_authority, self.map_authority]),
            method: self.method,
            path: first([self.path, self.header_path, self.map_path]),
            request_id: first([self.header_request_id, self.map_request_id, &[]]),
        }
    }
}

/// The slot of a header the check reads, by its (lower-case) name: `:authority`, `:path` or
/// `x-request-id`, in that order.
fn header_slot<'s, 'a>(key: &[u8], slots: [&'s mut &'a [u8]; 3]) -> Option<&'s mut &'a [u8]> {
    let [authority, path, request_id] = slots;
    match key {
        AUTHORITY => Some(authority),
        PATH => Some(path),
        REQUEST_ID => Some(request_id),
        _ => None,
    }
}

/// A `map<string, string>` entry: key and value, both empty when absent.
fn read_map_entry(message: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let mut key: &[u8] = &[];
    let mut value_bytes: &[u8] = &[];
    let mut fields = Fields::new(message);
    while let Some((number, value)) = fields.next_field()? {
        match number {
            field::MAP_ENTRY_KEY => key = value.bytes()?,
            field::MAP_ENTRY_VALUE => value_bytes = value.bytes()?,
            _ => {}
        }
    }
    Ok((key, value_bytes))
}

/// One field's value, by wire type.
#[derive(Clone, Copy, Debug)]
enum Value<'a> {
    Varint(u64),
    LengthDelimited(&'a [u8]),
    /// Fixed-width values and groups: never a field the policy reads.
    Other,
}

impl<'a> Value<'a> {
    fn bytes(self) -> Result<&'a [u8], &'static str> {
        match self {
            Self::LengthDelimited(bytes) => Ok(bytes),
            _ => Err("a string or message field has the wrong wire type"),
        }
    }

    fn message(self) -> Result<&'a [u8], &'static str> {
        self.bytes()
    }

    fn varint(self) -> Result<u64, &'static str> {
        match self {
            Self::Varint(value) => Ok(value),
            _ => Err("an integer field has the wrong wire type"),
        }
    }
}

/// Iterates over the fields of one message.
struct Fields<'a> {
    bytes: &'a [u8],
    position: usize,
}

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LENGTH_DELIMITED: u64 = 2;
const WIRE_START_GROUP: u64 = 3;
const WIRE_END_GROUP: u64 = 4;
const WIRE_FIXED32: u64 = 5;

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    /// The next field's number and value; `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, &'static str> {
        if self.position == self.bytes.len() {
            return Ok(None);
        }
        let (number, wire_type) = self.key()?;
        let value = match wire_type {
            WIRE_VARINT => Value::Varint(self.varint()?),
            WIRE_LENGTH_DELIMITED => {
                let len = usize::try_from(self.varint()?).map_err(|_| TRUNCATED)?;
                Value::LengthDelimited(self.take(len)?)
            }
            WIRE_FIXED64 => {
                self.take(8)?;
                Value::Other
            }
            WIRE_FIXED32 => {
                self.take(4)?;
                Value::Other
            }
            WIRE_START_GROUP => {
                self.skip_group(number)?;
                Value::Other
            }
            WIRE_END_GROUP => return Err("an end-group tag without its start"),
            _ => return Err("an invalid wire type"),
        };
        Ok(Some((number, value)))
    }

    fn key(&mut self) -> Result<(u32, u64), &'static str> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| "a field number out of range")?;
        if number == 0 {
            return Err("field number 0");
        }
        Ok((number, key & 7))
    }

    /// Skips a (deprecated) group up to its matching end tag, counting nested groups instead of
    /// recursing, so no nesting depth can exhaust the stack.
    fn skip_group(&mut self, number: u32) -> ReadResult {
        let mut open = vec![number];
        while let Some(&innermost) = open.last() {
            if self.position == self.bytes.len() {
                return Err(TRUNCATED);
            }
            let (number, wire_type) = self.key()?;
            match wire_type {
                WIRE_VARINT => {
                    self.varint()?;
                }
                WIRE_FIXED64 => {
                    self.take(8)?;
                }
                WIRE_FIXED32 => {
                    self.take(4)?;
                }
                WIRE_LENGTH_DELIMITED => {
                    let len = usize::try_from(self.varint()?).map_err(|_| TRUNCATED)?;
                    self.take(len)?;
                }
                WIRE_START_GROUP => open.push(number),
                WIRE_END_GROUP if number == innermost => {
                    open.pop();
                }
                WIRE_END_GROUP => return Err("an end-group tag that does not match its start"),
                _ => return Err("an invalid wire type"),
            }
        }
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value = 0_u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.position).ok_or(TRUNCATED)?;
            self.position += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                // The tenth byte may only hold the 64th bit.
                if shift == 63 && byte > 1 {
                    return Err("a varint longer than 64 bits");
                }
                return Ok(value);
            }
        }
        Err("a varint longer than 64 bits")
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        let end = self.position.checked_add(len).ok_or(TRUNCATED)?;
        let bytes = self.bytes.get(self.position..end).ok_or(TRUNCATED)?;
        self.position = end;
        Ok(bytes)
    }
}

const TRUNCATED: &str = "the message is truncated";

#[cfg(test)]
mod tests {
    use super::*;

    /// A length-delimited field.
    fn ld(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = varint(u64::from(number) << 3 | WIRE_LENGTH_DELIMITED);
        out.extend(varint(payload.len() as u64));
        out.extend_from_slice(payload);
        out
    }

    fn varint(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
        out
    }

    fn check(attributes: &[u8]) -> Vec<u8> {
        ld(field::CHECK_REQUEST_ATTRIBUTES, attributes)
    }

    fn destination_port(port_value: u64) -> Vec<u8> {
        let mut socket = varint(u64::from(field::SOCKET_ADDRESS_PORT_VALUE) << 3);
        socket.extend(varint(port_value));
        let address = ld(field::ADDRESS_SOCKET_ADDRESS, &socket);
        ld(
            field::ATTRIBUTES_DESTINATION,
            &ld(field::PEER_ADDRESS, &address),
        )
    }

    #[test]
    fn repeated_messages_merge_and_the_last_scalar_wins() {
        let source = |principal: &[u8]| {
            ld(
                field::ATTRIBUTES_SOURCE,
                &ld(field::PEER_PRINCIPAL, principal),
            )
        };
        let mut attributes = source(b"first");
        attributes.extend(ld(
            field::ATTRIBUTES_TLS_SESSION,
            &ld(field::TLS_SESSION_SNI, b"a.com"),
        ));
        // A second `attributes` message merges: its principal replaces, the SNI stays.
        let mut message = check(&attributes);
        message.extend(check(&source(b"second")));
        let fields = read_check_request(&message).unwrap();
        assert_eq!(fields.principal, b"second");
        assert_eq!(fields.sni, b"a.com");
        assert_eq!(fields.http, None);
    }

    #[test]
    fn ports_follow_the_address_oneof_and_fit_in_16_bits() {
        let port = |attributes: Vec<u8>| read_check_request(&check(&attributes)).unwrap().port;
        assert_eq!(port(destination_port(443)), Some(443));
        assert_eq!(port(destination_port(65_536)), None, "does not fit");
        // uint32 truncation, as protobuf does: 2^32 + 443 reads as 443.
        assert_eq!(port(destination_port((1 << 32) + 443)), Some(443));
        // A pipe after the socket address replaces it.
        let mut switched = destination_port(443);
        switched.extend(ld(
            field::ATTRIBUTES_DESTINATION,
            &ld(field::PEER_ADDRESS, &ld(field::ADDRESS_PIPE, b"")),
        ));
        assert_eq!(port(switched), None);
    }

    #[test]
    fn http_fields_fall_back_to_headers_then_the_raw_header_map() {
        let entry = |key: &[u8], value: &[u8]| {
            let mut entry = ld(field::MAP_ENTRY_KEY, key);
            entry.extend(ld(field::MAP_ENTRY_VALUE, value));
            ld(field::HTTP_HEADERS, &entry)
        };
        let mut http = entry(b":authority", b"old.com");
        http.extend(entry(b":authority", b"a.com"));
        http.extend(entry(b"x-request-id", b"id-1"));
        let mut raw = ld(field::HEADER_VALUE_KEY, b":path");
        raw.extend(ld(field::HEADER_VALUE_RAW_VALUE, b"/raw"));
        http.extend(ld(
            field::HTTP_HEADER_MAP,
            &ld(field::HEADER_MAP_HEADERS, &raw),
        ));
        let request = ld(field::ATTRIBUTES_REQUEST, &ld(field::REQUEST_HTTP, &http));
        let message = check(&request);
        let http = read_check_request(&message).unwrap().http.unwrap();
        assert_eq!(http.authority, b"a.com", "the last entry for a key wins");
        assert_eq!(http.path, b"/raw");
        assert_eq!(http.request_id, b"id-1");
    }

    #[test]
    fn unread_fields_are_skipped_whatever_their_type_or_depth() {
        let mut attributes = Vec::new();
        // Fixed-width fields and a group holding a nested group, all unknown.
        attributes.extend(varint(u64::from(20_u32) << 3 | WIRE_FIXED64));
        attributes.extend([0; 8]);
        attributes.extend(varint(u64::from(21_u32) << 3 | WIRE_FIXED32));
        attributes.extend([0; 4]);
        attributes.extend(varint(u64::from(22_u32) << 3 | WIRE_START_GROUP));
        attributes.extend(varint(u64::from(23_u32) << 3 | WIRE_START_GROUP));
        attributes.extend(varint(u64::from(23_u32) << 3 | WIRE_END_GROUP));
        attributes.extend(varint(u64::from(22_u32) << 3 | WIRE_END_GROUP));
        attributes.extend(ld(
            field::ATTRIBUTES_SOURCE,
            &ld(field::PEER_PRINCIPAL, b"p"),
        ));
        assert_eq!(
            read_check_request(&check(&attributes)).unwrap().principal,
            b"p"
        );
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        let http_then_garbage = {
            let mut message = check(&ld(
                field::ATTRIBUTES_REQUEST,
                &ld(field::REQUEST_HTTP, b""),
            ));
            message.push(0x0f);
            message
        };
        for (bytes, what, saw_http) in [
            (vec![0x0a, 0x05, 0x01], TRUNCATED, false),
            (vec![0x00], "field number 0", false),
            (
                vec![0x08, 0x01],
                "a string or message field has the wrong wire type",
                false,
            ),
            (vec![0x0c], "an end-group tag without its start", false),
            (
                vec![0x0b, 0x14],
                "an end-group tag that does not match its start",
                false,
            ),
            ([0xff; 11].to_vec(), "a varint longer than 64 bits", false),
            (http_then_garbage, "an invalid wire type", true),
        ] {
            assert_eq!(
                read_check_request(&bytes),
                Err(Malformed { what, saw_http }),
                "{bytes:?}"
            );
        }
    }
}
