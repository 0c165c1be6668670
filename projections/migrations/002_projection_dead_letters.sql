-- Events a projection could not apply (a value the database refuses, an event that does not decode):
-- recorded here, in the same transaction as the position that moves past them, so the projection goes on.
CREATE TABLE projection_dead_letters (
    projection   text        NOT NULL,
    topic        text        NOT NULL,
    partition    int         NOT NULL,
    kafka_offset bigint      NOT NULL,
    pandaid      bigint,
    seq          int,
    error        text        NOT NULL,
    raw          bytea       NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition, kafka_offset)
);
