//! Start-up's check that nothing else listens on the configured addresses (the shards bind
//! with SO_REUSEPORT, which would otherwise share a port with another process silently).
//!
//! Runs once on the main thread before any shard starts.

use super::StartError;
use crate::config::Config;

/// Refuses addresses something already listens on, and two of our own listeners (every
/// Kafka listener, `amqp.addr`/`tls_addr`, `http.addr`/`tls_addr`) on one port. The shards bind with SO_REUSEPORT,
/// which would let a second Portask share a port silently (the kernel would split the
/// connections between the two), so the listening sockets of the host (`/proc/net/tcp`,
/// `tcp6`) are checked first. Connections a previous run left closing do not count, and
/// port 0 (any free port) is not checked.
///
/// A Portask killed with `kill -9` releases its data directory at once, but the kernel
/// tears its io_uring rings down afterwards, and their pending accepts keep its listening
/// sockets open for a moment (accepting connections nobody serves). A clash is therefore
/// re-checked for up to `PORT_GRACE` before it is an error.
pub fn check_addresses_free(config: &Config) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    loop {
        match clashing_address(config) {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() >= PORT_GRACE => return Err(e),
            Err(e) => {
                if started.elapsed() < PORT_POLL {
                    log::info!("{e}; waiting up to {PORT_GRACE:?} in case an exiting process still holds it");
                }
                std::thread::sleep(PORT_POLL);
            }
        }
    }
}

/// How long a clash may last before start-up gives up (see `check_addresses_free`).
const PORT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
const PORT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

fn clashing_address(config: &Config) -> Result<(), StartError> {
    let listening = listening_sockets();
    // Without `kafka.listeners`, the one listener is `kafka.addr`.
    let mut wanted: Vec<(String, &String)> = if config.kafka.listeners.is_empty() {
        vec![("kafka.addr".to_owned(), &config.kafka.addr)]
    } else {
        config
            .kafka
            .listeners
            .iter()
            .map(|l| (format!("kafka listener '{}'", l.name), &l.addr))
            .collect()
    };
    wanted.extend([
        ("amqp.addr".to_owned(), &config.amqp.addr),
        ("amqp.tls_addr".to_owned(), &config.amqp.tls_addr),
        ("http.addr".to_owned(), &config.http.addr),
        ("http.tls_addr".to_owned(), &config.http.tls_addr),
    ]);
    // Two of our own listeners on one port would share it silently too (SO_REUSEPORT).
    let parsed: Vec<(&String, std::net::SocketAddr)> = wanted
        .iter()
        .filter_map(|(key, addr)| Some((key, addr.parse().ok()?)))
        .filter(|(_, a): &(_, std::net::SocketAddr)| a.port() != 0)
        .collect();
    for (i, (key, a)) in parsed.iter().enumerate() {
        for (other, b) in &parsed[i + 1..] {
            if overlaps(a, b) {
                return Err(StartError::SamePort(
                    (*key).clone(),
                    (*other).clone(),
                    a.to_string(),
                ));
            }
        }
    }
    for (key, addr) in wanted {
        let Ok(wanted) = addr.parse::<std::net::SocketAddr>() else {
            continue;
        };
        if wanted.port() == 0 {
            continue;
        }
        let clash = listening.iter().any(|l| overlaps(l, &wanted));
        if clash {
            return Err(StartError::AddrInUse(key, addr.clone()));
        }
    }
    Ok(())
}

/// Two addresses take the same connections: one port, and one IP or a wildcard.
fn overlaps(a: &std::net::SocketAddr, b: &std::net::SocketAddr) -> bool {
    a.port() == b.port() && (a.ip().is_unspecified() || b.ip().is_unspecified() || a.ip() == b.ip())
}

/// Every TCP socket in LISTEN state in this network namespace.
fn listening_sockets() -> Vec<std::net::SocketAddr> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; st 0A is LISTEN.
            if fields.len() < 4 || fields[3] != "0A" {
                continue;
            }
            if let Some(a) = parse_proc_addr(fields[1], v6) {
                out.push(a);
            }
        }
    }
    out
}

/// `0100007F:2384` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word of the
/// address in the kernel's byte order (little-endian here), the port in hex.
fn parse_proc_addr(s: &str, v6: bool) -> Option<std::net::SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
        .map(|i| {
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()
                .map(u32::to_le_bytes)
        })
        .collect();
    let bytes: Vec<u8> = words?.concat();
    let ip = if v6 {
        let b: [u8; 16] = bytes.try_into().ok()?;
        std::net::IpAddr::from(b)
    } else {
        let b: [u8; 4] = bytes.try_into().ok()?;
        std::net::IpAddr::from(b)
    };
    Some(std::net::SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_of_our_listeners_on_one_port_are_refused() {
        let mut config = Config::default();
        config.kafka.listeners = vec![crate::config::KafkaListener {
            name: "SSL".into(),
            addr: "127.0.0.1:19094".into(),
            security_protocol: String::new(),
            advertised_host: String::new(),
            advertised_port: 0,
            client_auth: None,
        }];
        config.amqp.tls_addr = "0.0.0.0:19094".into();
        match clashing_address(&config) {
            Err(StartError::SamePort(a, b, _)) => {
                assert_eq!(a, "kafka listener 'SSL'");
                assert_eq!(b, "amqp.tls_addr");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn proc_net_addresses_are_read_in_kernel_byte_order() {
        assert_eq!(
            parse_proc_addr("0100007F:2384", false),
            Some("127.0.0.1:9092".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:1F90", true),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(parse_proc_addr("zz:1", false), None);
    }
}
