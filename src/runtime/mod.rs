//! The runtime of one shard, protocol-free: its `Core` (id, mesh end, reply table, open
//! connections, stop signal, and the per-shard locals each layer registers), the mesh's
//! messages (work to run on another shard, answers), cross-shard answers (`reply`), the
//! accept loop every listener runs (`listener`) and the move of a connection to another
//! shard (`listener::hand_over`, decided by `placement`), an accepted connection plain or
//! over TLS (`transport`), the process-wide stop (`shutdown`) and the host checks made before start
//! (`preflight`).
//!
//! Nothing here names Kafka, AMQP, consumer groups or HTTP: protocols build their calls on
//! `Core::ask`/`invoke_on`, and `broker` wires everything together at start-up.

pub mod core;
pub mod listener;
pub mod mesh;
pub mod placement;
pub mod preflight;
pub mod reply;
pub mod shutdown;
pub mod transport;
