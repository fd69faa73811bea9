-- The demo's read model: one row per order with its latest status, written by the
-- EventConsumer `orders-to-postgres` (PostgreSQL sink, upsertKey [order_id]).
--
-- The sink turns each event into a row with jsonb_populate_record: the columns below that the
-- event has as top-level fields (event_type, order_id, seq, customer, total_cents, carrier,
-- occurred_at) are inserted, or updated on the row with the same order_id. The other columns
-- are the trigger's: it counts the events applied to the row and checks the order's own
-- sequence number, so the table shows that per-order order is kept (out_of_order stays 0) and
-- that every event landed exactly once (sum(events_applied) = events written).
-- Idempotent: run by examples/demo/run on every start.
CREATE SCHEMA IF NOT EXISTS read_model;

CREATE TABLE IF NOT EXISTS read_model.order_status (
    order_id bigint PRIMARY KEY,
    event_type text NOT NULL,          -- the latest event: OrderPlaced, OrderPaid, OrderShipped
    seq bigint NOT NULL,               -- the order's sequence number of that event (1, 2, 3)
    customer text,
    total_cents bigint,
    carrier text,
    occurred_at timestamptz,           -- when the application wrote the event
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(), -- when the sink applied it
    events_applied bigint NOT NULL DEFAULT 1,
    out_of_order bigint NOT NULL DEFAULT 0
);

CREATE OR REPLACE FUNCTION read_model.order_status_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.events_applied := 1;
        NEW.out_of_order := CASE WHEN NEW.seq = 1 THEN 0 ELSE 1 END;
    ELSE
        NEW.events_applied := OLD.events_applied + 1;
        NEW.out_of_order := OLD.out_of_order
            + CASE WHEN NEW.seq = OLD.seq + 1 THEN 0 ELSE 1 END;
    END IF;
    NEW.applied_at := clock_timestamp();
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER order_status_apply
    BEFORE INSERT OR UPDATE ON read_model.order_status
    FOR EACH ROW EXECUTE FUNCTION read_model.order_status_apply();
