-- Events a service loop could not decide on (an event that does not decode, a value its own tables refuse,
-- a decision that raised): recorded here before the loop commits past them, so the service goes on.
CREATE TABLE service_dead_letters (
    service      text        NOT NULL,
    topic        text        NOT NULL,
    partition    int         NOT NULL,
    kafka_offset bigint      NOT NULL,
    pandaid      bigint,
    seq          int,
    error        text        NOT NULL,
    raw          bytea       NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, topic, partition, kafka_offset)
);
