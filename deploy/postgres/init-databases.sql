-- One database per service; each service owns its schema and applies its own migrations.
CREATE DATABASE progress;
CREATE DATABASE enrollment;
CREATE DATABASE certificates;
CREATE DATABASE notifications;
