"""`unison client`: watches the relayer's change notifications and keeps converged CRDT
state (see unison.crdt), printing the seed's lines and serving /state and /metrics."""
