package io.pipewright.bench;

import io.confluent.parallelconsumer.ParallelConsumerOptions;
import io.confluent.parallelconsumer.ParallelConsumerOptions.ProcessingOrder;
import io.confluent.parallelconsumer.ParallelStreamProcessor;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.LongAdder;
import java.util.concurrent.locks.LockSupport;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * The peer of docs/benchmarks.md section 2: Confluent Parallel Consumer, KEY ordering,
 * maxConcurrency = the worker's concurrency, reading a topic from the beginning in a fresh group
 * with a handler that blocks its thread for delay + jitterOf(record) (LockSupport.parkNanos until
 * the deadline: the kernel's high-resolution timer, as a blocking call that waits for a response).
 * A record's jitter is the worker's (pipewright_worker::consume::sinks::discard::jitter_of): both
 * contenders wait for the same time on the same record.
 * Everything else is the library's default. After the given number of records it closes (which
 * commits) and prints one JSON line: the window from the first handler call's start to the last
 * one's end, and the mean handler time it measured.
 *
 * <p>Arguments: --bootstrap B --topic T --group G --records N --concurrency C --delay-us D
 * --jitter-us J [--timeout-s S].
 */
public final class ParallelConsumerPeer {
  public static void main(String[] argv) throws Exception {
    Map<String, String> args = new HashMap<>();
    for (int i = 0; i + 1 < argv.length; i += 2) {
      args.put(argv[i], argv[i + 1]);
    }
    String topic = required(args, "--topic");
    long records = Long.parseLong(required(args, "--records"));
    int concurrency = Integer.parseInt(required(args, "--concurrency"));
    long delayNanos = Long.parseLong(required(args, "--delay-us")) * 1_000;
    long jitterNanos = Long.parseLong(args.getOrDefault("--jitter-us", "0")) * 1_000;
    long timeoutS = Long.parseLong(args.getOrDefault("--timeout-s", "600"));

    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, required(args, "--bootstrap"));
    props.put(ConsumerConfig.GROUP_ID_CONFIG, required(args, "--group"));
    props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    // Parallel Consumer commits itself and refuses a consumer that auto-commits.
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props);

    ParallelConsumerOptions<byte[], byte[]> options =
        ParallelConsumerOptions.<byte[], byte[]>builder()
            .ordering(ProcessingOrder.KEY)
            .maxConcurrency(concurrency)
            .consumer(consumer)
            .build();
    ParallelStreamProcessor<byte[], byte[]> pc =
        ParallelStreamProcessor.createEosStreamProcessor(options);
    pc.subscribe(List.of(topic));

    long epochNanosAtStart = System.currentTimeMillis() * 1_000_000L;
    long nanoAtStart = System.nanoTime();
    AtomicLong firstStart = new AtomicLong(Long.MIN_VALUE);
    AtomicLong lastEnd = new AtomicLong();
    AtomicLong done = new AtomicLong();
    LongAdder handlerNanos = new LongAdder();
    // The times the handler was set to take, summed: the harness checks them against the
    // worker's jitter_of for the same records.
    LongAdder setWaitNanos = new LongAdder();
    CountDownLatch all = new CountDownLatch(1);
    pc.poll(
        context -> {
          long start = System.nanoTime();
          firstStart.compareAndSet(Long.MIN_VALUE, start);
          var record = context.getSingleConsumerRecord();
          long wait = delayNanos + jitterOf(jitterNanos, record.partition(), record.offset());
          setWaitNanos.add(wait);
          long deadline = start + wait;
          for (long left = wait; left > 0; left = deadline - System.nanoTime()) {
            LockSupport.parkNanos(left);
          }
          long end = System.nanoTime();
          handlerNanos.add(end - start);
          if (done.incrementAndGet() == records) {
            lastEnd.set(end);
            all.countDown();
          }
        });

    boolean finished = all.await(timeoutS, TimeUnit.SECONDS);
    pc.close();
    if (!finished) {
      System.err.printf("only %d of %d records in %d s%n", done.get(), records, timeoutS);
      System.exit(1);
    }
    long calls = done.get();
    double windowS = (lastEnd.get() - firstStart.get()) / 1e9;
    System.out.printf(
        "{\"records\": %d, \"handler_calls\": %d, \"window_s\": %.6f, \"first_epoch_ms\": %.3f,"
            + " \"last_epoch_ms\": %.3f, \"handler_mean_ms\": %.6f, \"set_wait_ns\": %d}%n",
        records,
        calls,
        windowS,
        (epochNanosAtStart + firstStart.get() - nanoAtStart) / 1e6,
        (epochNanosAtStart + lastEnd.get() - nanoAtStart) / 1e6,
        handlerNanos.sum() / 1e6 / calls,
        setWaitNanos.sum());
  }

  /**
   * The jitter of the record at partition, offset, in nanoseconds: uniform in 0..=jitterNanos, the
   * splitmix64 of (partition << 40 | offset) modulo jitterNanos + 1 (unsigned). The same function
   * as the worker's jitter_of, whose test pins the values: (0, 0) → 17736006, (0, 1) → 3831458,
   * (0, 999) → 1716637, (3, 12345) → 13677222 for 19 ms.
   */
  static long jitterOf(long jitterNanos, int partition, long offset) {
    if (jitterNanos == 0) {
      return 0;
    }
    long z = (((long) partition << 40) | offset) + 0x9E3779B97F4A7C15L;
    z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
    z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
    z ^= z >>> 31;
    return Long.remainderUnsigned(z, jitterNanos + 1);
  }

  private static String required(Map<String, String> args, String name) {
    String value = args.get(name);
    if (value == null) {
      throw new IllegalArgumentException("missing " + name);
    }
    return value;
  }
}
