-- Fencing by process (SPEC §7: no two processes ever commit for one session at once).
-- Each process that starts as a node is a new incarnation: a lease is held by one
-- incarnation of a node id, renewed only by it, and taken by another only once it
-- lapsed. Every commit checks that its process holds the lease (see
-- actors/src/pg/cluster.rs).
ALTER TABLE nodes ADD COLUMN incarnation TEXT NOT NULL DEFAULT '';
