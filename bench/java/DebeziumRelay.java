// The outbox benchmark's peer (`make bench`, section 3; bench/src/outbox/): Debezium's embedded
// engine with its PostgreSQL connector (pgoutput logical replication) and the outbox
// EventRouter transform, publishing every routed record to Kafka the way Debezium Server's
// Kafka sink does: send the engine's batch, wait until Kafka acknowledged every record of it
// (acks=all, idempotent producer), then mark the batch processed so that its offset may be
// committed. At least once, like pipewright's worker.
//
// Usage: java -cp <classes>:<debezium jars> DebeziumRelay <properties file>
// The file holds the engine's and connector's properties; keys starting with `producer.` are
// the Kafka producer's (prefix removed). Prints `relay: task started` when the connector's task
// runs; stops on SIGTERM (the engine closes, the JVM exits 0).

import java.io.FileInputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.connect.header.Header;
import org.apache.kafka.connect.source.SourceRecord;

import io.debezium.embedded.Connect;
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;

public final class DebeziumRelay {
    public static void main(String[] args) throws Exception {
        Properties all = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            all.load(in);
        }
        Properties engineProps = new Properties();
        Properties producerProps = new Properties();
        for (String name : all.stringPropertyNames()) {
            if (name.startsWith("producer.")) {
                producerProps.put(name.substring("producer.".length()), all.getProperty(name));
            } else {
                engineProps.put(name, all.getProperty(name));
            }
        }
        producerProps.put("key.serializer", ByteArraySerializer.class.getName());
        producerProps.put("value.serializer", ByteArraySerializer.class.getName());
        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerProps);

        CountDownLatch stopped = new CountDownLatch(1);
        int[] exitCode = {0};
        DebeziumEngine<ChangeEvent<SourceRecord, SourceRecord>> engine = DebeziumEngine.create(Connect.class)
                .using(engineProps)
                .using(new DebeziumEngine.ConnectorCallback() {
                    @Override
                    public void taskStarted() {
                        System.out.println("relay: task started");
                        System.out.flush();
                    }
                })
                .using((success, message, error) -> {
                    if (!success) {
                        System.err.println("relay: engine stopped with an error: " + message);
                        if (error != null) {
                            error.printStackTrace();
                        }
                        exitCode[0] = 1;
                    }
                    stopped.countDown();
                })
                .notifying((records, committer) -> {
                    List<Future<RecordMetadata>> acks = new ArrayList<>(records.size());
                    for (ChangeEvent<SourceRecord, SourceRecord> event : records) {
                        // The Connect format hands over the transformed SourceRecord itself.
                        SourceRecord record = event.value();
                        if (record.topic() == null || record.value() == null) {
                            continue;
                        }
                        RecordHeaders headers = new RecordHeaders();
                        for (Header h : record.headers()) {
                            // The engine's own context headers (connector name, task, run id)
                            // are left out, so that both relays publish the same record.
                            if (h.value() != null && !h.key().startsWith("__debezium.context.")) {
                                headers.add(h.key(), h.value().toString().getBytes(StandardCharsets.UTF_8));
                            }
                        }
                        byte[] key = record.key() == null ? null : record.key().toString().getBytes(StandardCharsets.UTF_8);
                        byte[] value = record.value().toString().getBytes(StandardCharsets.UTF_8);
                        acks.add(producer.send(new ProducerRecord<>(record.topic(), null, key, value, headers)));
                    }
                    try {
                        for (Future<RecordMetadata> ack : acks) {
                            ack.get();
                        }
                    } catch (Exception e) {
                        throw new RuntimeException("Kafka did not acknowledge a record", e);
                    }
                    for (ChangeEvent<SourceRecord, SourceRecord> event : records) {
                        committer.markProcessed(event);
                    }
                    committer.markBatchFinished();
                })
                .build();

        ExecutorService executor = Executors.newSingleThreadExecutor();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                engine.close();
                stopped.await(30, TimeUnit.SECONDS);
                producer.close();
            } catch (Exception e) {
                e.printStackTrace();
            }
        }));
        executor.execute(engine);
        stopped.await();
        executor.shutdown();
        System.exit(exitCode[0]);
    }
}
