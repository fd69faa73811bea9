-- The pipewright transactional outbox (see worker/src/outbox/mod.rs for the guarantees).
-- Debezium-compatible columns plus seq/txid, which give the poller its commit-safe order.
-- Keep the sequence at CACHE 1 (the default): the ordering proof needs nextval() calls to be
-- numbered in the order they happen.
CREATE SEQUENCE outbox_seq AS bigint NO CYCLE;

CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload jsonb,
    headers jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set by the outbox_stamp trigger: never insert these yourself.
    seq bigint NOT NULL UNIQUE,
    txid xid8 NOT NULL,
    published_at timestamptz
);

ALTER SEQUENCE outbox_seq OWNED BY outbox.seq;

CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;

-- Assigns the writing transaction's id *before* its sequence number: the poller's fence
-- relies on every transaction that holds a sequence number already having an xid.
CREATE OR REPLACE FUNCTION pipewright_outbox_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.txid := pg_current_xact_id();
    NEW.seq := nextval(format('%I.%I', TG_TABLE_SCHEMA, TG_ARGV[0]));
    RETURN NEW;
END
$$;

-- Wakes the poller (LISTEN pipewright_outbox_<table oid>); polling is the fallback.
CREATE OR REPLACE FUNCTION pipewright_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pipewright_outbox_' || TG_RELID::text, '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_stamp BEFORE INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION pipewright_outbox_stamp('outbox_seq');

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION pipewright_outbox_notify();
