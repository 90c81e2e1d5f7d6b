//! The agent: runs beside one PostgreSQL server.

pub mod postgres;
