-- Views for the common questions. Each reads the deduplicated rows, without
-- the persons a funnel's exclude events took out of it (excluded = 1; their
-- rows stay in the tables, marked).

-- Windowed counts as plain numbers.
CREATE OR REPLACE VIEW {database}.stage_counts_final AS
SELECT window_start, window_seconds, funnel, kind, from_stage, stage, channel,
       count() AS users
FROM {database}.stage_counts FINAL
GROUP BY window_start, window_seconds, funnel, kind, from_stage, stage, channel;

-- Entries per day, funnel, stage and (attributed) channel.
CREATE OR REPLACE VIEW {database}.daily_stage_entries AS
SELECT toDate(ts) AS day, funnel, stage, stage_index, channel, count() AS users
FROM {database}.stage_entries FINAL
WHERE excluded = 0
GROUP BY day, funnel, stage, stage_index, channel;

-- Period conversion by day and channel: users who entered each stage that day
-- over users who entered the previous stage that day (a period ratio, the
-- same thing Prometheus computes; see cohort_conversion for the cohort view).
CREATE OR REPLACE VIEW {database}.conversion_by_day_channel AS
SELECT day, funnel, channel, stage, stage_index, users,
       any(users) OVER (PARTITION BY day, funnel, channel ORDER BY stage_index
                        ROWS BETWEEN 1 PRECEDING AND 1 PRECEDING) AS previous_stage_users,
       if(previous_stage_users = 0 OR stage_index = 0, NULL, users / previous_stage_users)
           AS period_conversion
FROM {database}.daily_stage_entries;

-- Time to convert per transition: quantiles in seconds.
CREATE OR REPLACE VIEW {database}.time_to_convert AS
SELECT funnel, from_stage, to_stage, count() AS transitions,
       quantileExact(0.5)(seconds) AS p50_seconds,
       quantileExact(0.9)(seconds) AS p90_seconds,
       quantileExact(0.99)(seconds) AS p99_seconds
FROM {database}.transitions FINAL
WHERE excluded = 0
GROUP BY funnel, from_stage, to_stage;

