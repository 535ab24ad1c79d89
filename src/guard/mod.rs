//! The pod guard's records on the node: what an ADD wrote about each guarded attachment and
//! which host device each table is bound to. The CNI verbs, the agent and `status` read and
//! write them only through here.
//!
//! - [`record`]: one [`record::PodRecord`] per guarded attachment, `<stateDir>/<key>.json`,
//!   written at ADD, removed at DEL and GC; the table its policy compiles to.
//! - [`inspect`]: drift between the kernel and the table a record compiles to.
//! - [`devindex`]: host device name -> the tables bound to it, so ADD finds a stale table
//!   without listing every table on the node.

pub mod devindex;
pub mod inspect;
pub mod record;
