-- How far each process's heartbeat buffer is in the database (docs/progress.md, "Viewing
-- sessions"). A heartbeat waits in its process's memory until the next flush; a session
-- whose idle time has passed by the clock may still have one waiting in a process whose
-- flush is late (a loaded machine, a pause, the database away). The closing loop ends a
-- session only once every live process has flushed past its idle time: never early.
CREATE TABLE heartbeat_flushers (
    process_id uuid PRIMARY KEY,
    -- every heartbeat this process accepted before this moment (its clock) is written
    flushed_through timestamptz NOT NULL,
    -- the database's clock at the last write: a process silent for longer than the expiry
    -- is taken for gone (a crash loses its buffer anyway) and no longer holds sessions open
    written_at timestamptz NOT NULL DEFAULT now()
);
