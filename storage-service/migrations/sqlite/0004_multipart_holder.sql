-- Which process started each multipart upload: "<host>/<listen address>", the same for
-- a replica restarted in its place. At start a replica abandons its predecessor's
-- stream uploads (that process is gone: it held the address); another replica's are
-- abandoned only once their holder's upload leases lapse, so restarting one replica
-- never cuts off the streams its peers are receiving. Rows from before this column
-- have no holder and are abandoned as before.
ALTER TABLE multipart_uploads ADD COLUMN holder TEXT;
