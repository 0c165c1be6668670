-- Large fields stored once beside the event that names them (core/payloads.py): a pilot's output report or
-- job metadata too big to travel inside a Kafka message. Content-addressed: `ref` is "sha256:<hex digest>"
-- of the UTF-8 text, so the same text is stored once and a reader can check what it got.
CREATE TABLE payloads (
    ref        text        PRIMARY KEY,
    size       bigint      NOT NULL,
    body       text        NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now()
);
