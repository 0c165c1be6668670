-- getJob asks share by share (services/dispatcher.py::candidate_queries): the activated jobs of one
-- global share of [dispatcher] share_order in (priority, PandaID) order come from this index without a
-- scan of the site's backlog; the jobs of every other share from jobs_dispatch (001).
CREATE INDEX jobs_dispatch_share ON jobs (computing_site, gshare, current_priority DESC, pandaid)
    WHERE status = 'activated';
