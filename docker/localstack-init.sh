#!/bin/sh
# LocalStack runs this once S3 and SQS answer: the bucket and the notification queues with their redrive.
set -eu
awslocal s3 mb s3://chat-images
awslocal sqs create-queue --queue-name chat-notifications-dlq
awslocal sqs create-queue --queue-name chat-notifications \
  --attributes '{"RedrivePolicy": "{\"deadLetterTargetArn\":\"arn:aws:sqs:us-east-1:000000000000:chat-notifications-dlq\",\"maxReceiveCount\":\"5\"}"}'
