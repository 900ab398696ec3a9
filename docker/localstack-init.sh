#!/bin/sh
# LocalStack runs this once S3 answers. The queues need nothing: the SQS adapter creates them (with
# their redrive policy) when they are missing.
set -eu
awslocal s3 mb s3://chat-images
