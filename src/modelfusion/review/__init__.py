"""`fusion review`: diff chunks, findings, the review runner and its reports."""
